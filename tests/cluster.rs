//! Root tests of replication with real processes: three `vexevent run` instances on loopback,
//! each watching its own directory with a real workload (file writes), form a cluster; every
//! node's output holds every node's events exactly once; the leader is killed (SIGKILL) under
//! load, a new leader takes the survivors' events, the killed node restarts with its data and
//! catches up; per origin, delivered + reported lost == performed, with no repeats. Through
//! fault-injecting proxies between the members: the leader stopped (SIGSTOP) under load and
//! continued; a follower, the leader and everyone partitioned (the cut-off side refuses strong
//! writes and says why); randomized schedules of these faults and kills (`cargo xtask chaos`).
//! The consistency modes: `eventual` delivers a node's own events without a quorum; `causal`
//! stamps every event with a hybrid logical clock and delivers what a node had seen before what
//! it captured next, on every node; `session` readers carry the index they saw to another node.
//! The cluster-wide counters (CRDTs) sum every node's and converge after a node was stopped.
//! `vexevent log --follow`: a reader of the live log whose member is killed resumes on another
//! from its last position, and the two together are the committed log; the stream server serves
//! the same from a position after a session; a slow reader the compaction overtakes is told so.

mod support;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Mount, Vexevent, event_path_bytes, exclusive_root_test, proxy::Proxy, read_events};

/// How long the cluster may take to form, deliver, elect.
const DEADLINE: Duration = Duration::from_mins(2);

/// One member's files.
struct Node {
    id: u64,
    watch: PathBuf,
    config: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes three members' configurations under `base`.
fn cluster(base: &Path) -> Vec<Node> {
    cluster_with(base, "", |_, _, addr| addr)
}

/// Writes three members' configurations under `base`, with `extra` lines in `[cluster]` (`{id}`
/// in them: the member's raft id); member `from` dials member `to` at `dial(from, to, address to
/// listens on)`.
fn cluster_with(
    base: &Path,
    extra: &str,
    mut dial: impl FnMut(u64, u64, SocketAddr) -> SocketAddr,
) -> Vec<Node> {
    let secret = base.join("secret");
    std::fs::write(&secret, "a shared secret of the three members\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let listen: Vec<SocketAddr> =
        (0..3).map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
    (1..=3u64)
        .map(|id| {
            let peers = (1..=3u64).fold(String::new(), |mut peers, to| {
                let real = listen[usize::try_from(to).unwrap() - 1];
                let addr = if to == id { real } else { dial(id, to, real) };
                let _ = writeln!(peers, "{to} = \"{addr}\"");
                peers
            });
            let watch = base.join(format!("watch{id}"));
            std::fs::create_dir_all(&watch).unwrap();
            let config = base.join(format!("node{id}.toml"));
            let text = format!(
                "[node]\nid = \"n{id}\"\n[capture]\nops = [\"write\"]\n[cluster]\nnode_id = {id}\n\
                 listen = \"{listen}\"\ndata_dir = \"{data}\"\nsecret_file = \"{secret}\"\n\
                 heartbeat_ms = 100\nelection_timeout_ms = [500, 1000]\n{extra}\n[cluster.peers]\n{peers}",
                extra = extra.replace("{id}", &id.to_string()),
                listen = listen[usize::try_from(id).unwrap() - 1],
                data = base.join(format!("data{id}")).display(),
                secret = secret.display(),
            );
            std::fs::write(&config, text).unwrap();
            Node { id, watch, config }
        })
        .collect()
}

fn start(node: &Node) -> Vexevent {
    Vexevent::start(
        &[&node.watch],
        &["--config", node.config.to_str().unwrap(), "--control-addr", "127.0.0.1:0"],
    )
}

/// The member's view of the cluster, through its control API.
fn status(vexevent: &Vexevent) -> Option<Value> {
    serde_json::from_str(&api(vexevent, "/api/v1/cluster/status")?).ok()
}

/// What the member's control API answers at `path` (its full token).
fn api(vexevent: &Vexevent, path: &str) -> Option<String> {
    let addr = vexevent.served_address("http://");
    // Bounded: a stopped member's kernel accepts the connection and nothing answers.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {}", vexevent.token()))
        .call()
        .ok()?;
    response.body_mut().read_to_string().ok()
}

fn leader_of(vexevent: &Vexevent) -> Option<u64> {
    status(vexevent)?["leader"].as_u64()
}

/// Waits until `what` holds, polling (deadline, no fixed sleep).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The files each node's workload wrote, in order.
type Performed = Vec<PathBuf>;

/// Writes `count` files in `dir` (one write event each), named `{prefix}{k}`; stops early when
/// `stop` is set. Returns the files written.
fn workload(dir: &Path, prefix: &str, count: usize, stop: &AtomicBool) -> Performed {
    let mut written = Vec::with_capacity(count);
    for k in 0..count {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let path = dir.join(format!("{prefix}{k}"));
        std::fs::write(&path, b"replicate").unwrap();
        written.push(path);
    }
    written
}

/// The write events of an output, by path, with their origin ids.
fn writes(events: &[Value]) -> Vec<(PathBuf, String, String)> {
    events
        .iter()
        .filter(|e| e["event_type"] == "FilesystemWrite")
        .filter_map(|e| {
            let path = event_path_bytes(&e["context"]["filesystem"]["path"])?;
            let path = PathBuf::from(String::from_utf8(path).ok()?);
            Some((path, e["origin"]["node"].as_str()?.to_owned(), e["origin"]["id"].as_str()?.to_owned()))
        })
        .collect()
}

/// How many times each performed file appears among `delivered`, and repeats of an origin id.
fn reconcile(performed: &[PathBuf], delivered: &[(PathBuf, String, String)]) -> (usize, usize, usize) {
    let wanted: HashSet<&PathBuf> = performed.iter().collect();
    let mut seen: HashMap<&PathBuf, usize> = HashMap::new();
    let mut ids = HashSet::new();
    let mut repeats = 0;
    for (path, _, id) in delivered {
        if wanted.contains(path) {
            *seen.entry(path).or_default() += 1;
            if !ids.insert(id) {
                repeats += 1;
            }
        }
    }
    let once = seen.values().filter(|&&n| n == 1).count();
    let missing = performed.len() - seen.len();
    (once, missing, repeats)
}

/// Events the node reported lost (ring losses, cluster buffer or shutdown drops), from its stats file.
fn reported_lost(vexevent: &Vexevent) -> u64 {
    let stats: Value = std::fs::read(&vexevent.stats_file)
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .unwrap_or_default();
    ["lost_reported", "cluster_dropped_buffer_full", "cluster_dropped_shutdown"]
        .iter()
        .map(|name| stats["userspace"][name].as_u64().unwrap_or(0))
        .sum()
}

/// Runs `vexevent ARGS` against `member`'s control API: whether it succeeded, stdout, stderr.
fn cli(member: &Vexevent, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vexevent"))
        .args(args)
        .args(["--control-addr", &member.served_address("http://")])
        .arg("--token-file")
        .arg(member.token_file())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Starts the three members of `nodes` and waits until they agree on a leader.
fn start_cluster(nodes: &[Node]) -> BTreeMap<u64, Vexevent> {
    agreed(nodes.iter().map(|node| (node.id, start(node))).collect())
}

/// Waits until the `running` members agree on a leader.
fn agreed(running: BTreeMap<u64, Vexevent>) -> BTreeMap<u64, Vexevent> {
    wait_until("a leader every member agrees on", || {
        let leaders: Vec<Option<u64>> = running.values().map(leader_of).collect();
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    });
    running
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario in its order: form, load, kill, elect, restart, read back"
)]
fn three_nodes_replicate_every_event_once_and_survive_the_leader_being_killed() {
    let Some(_serial) =
        exclusive_root_test("three_nodes_replicate_every_event_once_and_survive_the_leader_being_killed")
    else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let nodes = cluster(base.path());
    let mut running: BTreeMap<u64, Vexevent> = nodes.iter().map(|node| (node.id, start(node))).collect();
    wait_until("a leader every member agrees on", || {
        let leaders: Vec<Option<u64>> = running.values().map(leader_of).collect();
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    });

    // Phase 1: each node writes 200 files; every node's output gets all 600, once each.
    let never = AtomicBool::new(false);
    let mut performed: BTreeMap<u64, Performed> = BTreeMap::new();
    for node in &nodes {
        performed.insert(node.id, workload(&node.watch, "a", 200, &never));
    }
    for (id, vexevent) in &running {
        wait_until(&format!("node {id} to hold every node's writes"), || {
            let delivered = writes(&vexevent.events_so_far());
            performed.values().all(|files| reconcile(files, &delivered).1 == 0)
        });
        let delivered = writes(&vexevent.events_so_far());
        for (origin, files) in &performed {
            let (once, missing, repeats) = reconcile(files, &delivered);
            assert_eq!((once, missing, repeats), (files.len(), 0, 0), "node {id}, writes of node {origin}");
        }
        let origins: HashSet<&str> = delivered.iter().map(|(_, node, _)| node.as_str()).collect();
        assert_eq!(origins, HashSet::from(["n1", "n2", "n3"]), "every origin is named");
    }

    // Phase 2: under load on every node, the leader is killed.
    let leader = leader_of(&running[&1]).unwrap();
    let stop = Arc::new(never);
    let loads: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (dir, stop) = (node.watch.clone(), Arc::clone(&stop));
            (node.id, std::thread::spawn(move || workload(&dir, "b", 4_000, &stop)))
        })
        .collect();
    // Kill once the load is visibly flowing through the cluster.
    let survivor = nodes.iter().map(|n| n.id).find(|&id| id != leader).unwrap();
    let before = writes(&running[&survivor].events_so_far()).len();
    wait_until("the load to reach the cluster", || {
        writes(&running[&survivor].events_so_far()).len() > before + 300
    });
    let killed = running.remove(&leader).unwrap();
    let killed_output = killed.output.clone();
    killed.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    // A write on a survivor right after the kill: committed once a new leader takes writes.
    let marker = nodes[usize::try_from(survivor).unwrap() - 1].watch.join("after-kill");
    std::fs::write(&marker, b"marker").unwrap();
    performed.get_mut(&survivor).unwrap().push(marker.clone());
    wait_until("a write after the kill to commit", || {
        writes(&running[&survivor].events_so_far()).iter().any(|(path, _, _)| *path == marker)
    });
    let accepted_in = killed_at.elapsed();
    wait_until("a new leader", || running.values().all(|v| leader_of(v).is_some_and(|l| l != leader)));
    let elected_in = killed_at.elapsed();
    for (id, thread) in loads {
        let files = thread.join().unwrap();
        performed.get_mut(&id).unwrap().extend(files);
    }
    let killed_delivered = writes(&read_events(&killed_output));
    drop(killed);

    // The survivors hold every survivor write once (or report it lost), the new leader's too.
    for (id, vexevent) in &running {
        for (origin, files) in performed.iter().filter(|(origin, _)| **origin != leader) {
            let origin_node = running.get(origin).unwrap();
            wait_until(&format!("node {id} to hold node {origin}'s writes"), || {
                let delivered = writes(&vexevent.events_so_far());
                let (_, missing, _) = reconcile(files, &delivered);
                missing as u64 <= reported_lost(origin_node)
            });
            let delivered = writes(&vexevent.events_so_far());
            let (once, missing, repeats) = reconcile(files, &delivered);
            let lost = reported_lost(origin_node);
            eprintln!(
                "node {id}: node {origin}: performed {}, delivered {once}, missing {missing}, reported lost {lost}",
                files.len()
            );
            assert_eq!(repeats, 0, "node {id}: repeats of node {origin}'s writes");
            assert_eq!(
                once + missing,
                files.len(),
                "node {id}: node {origin}'s writes are delivered at most once"
            );
            assert!(
                missing as u64 <= lost,
                "node {id}: node {origin}: {missing} writes missing, {lost} reported lost"
            );
        }
        // The killed node's writes: none twice, none that it did not perform.
        let files = &performed[&leader];
        let delivered = writes(&vexevent.events_so_far());
        let (_, _, repeats) = reconcile(files, &delivered);
        assert_eq!(repeats, 0, "node {id}: repeats of the killed node's writes");
        let leader_name = format!("n{leader}");
        assert!(
            delivered
                .iter()
                .filter(|(_, node, _)| *node == leader_name)
                .all(|(path, _, _)| files.contains(path))
        );
    }

    // The killed node restarts with its data and catches up on what it missed.
    let restarted = start(&nodes[usize::try_from(leader).unwrap() - 1]);
    let survivor_files: Vec<&PathBuf> =
        performed.iter().filter(|(origin, _)| **origin != leader).flat_map(|(_, files)| files).collect();
    let reference = writes(&running[&survivor].events_so_far());
    let committed: HashSet<&PathBuf> = reference.iter().map(|(path, _, _)| path).collect();
    let end = Instant::now() + DEADLINE;
    loop {
        let mut seen: HashSet<PathBuf> = killed_delivered.iter().map(|(path, _, _)| path.clone()).collect();
        seen.extend(writes(&restarted.events_so_far()).into_iter().map(|(path, _, _)| path));
        let missing =
            survivor_files.iter().filter(|path| committed.contains(*path) && !seen.contains(**path)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < end,
            "the restarted node misses {missing} committed writes: {:?} {:?}",
            status(&restarted),
            restarted.stderr
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = writes(&restarted.events_so_far());
    let mut ids = HashSet::new();
    assert!(after.iter().all(|(_, _, id)| ids.insert(id)), "the restarted node delivers nothing twice");
    let overlap = killed_delivered.iter().filter(|(_, _, id)| ids.contains(id)).count();
    eprintln!(
        "cluster: leader {leader} killed; a write on member {survivor} committed {accepted_in:?} after the kill, every survivor named the new leader after {elected_in:?}; restarted node: {} writes before the kill, {} after, {overlap} delivered on both sides of the crash (its delivered mark lags by one to two 200 ms periods)",
        killed_delivered.len(),
        after.len(),
    );
    // `vexevent cluster status` and `vexevent log --from 0` read a member through its control API.
    let member = &running[&survivor];
    wait_until("a leader after the restart", || leader_of(member).is_some_and(|l| l != leader));
    let cli = |args: &[&str]| {
        let (ok, stdout, stderr) = cli(member, args);
        assert!(ok, "{args:?}: {stderr}");
        (stdout, stderr)
    };
    let (text, _) = cli(&["cluster", "status", "--json"]);
    let status: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
    assert!(status["leader"].as_u64().is_some_and(|l| l != leader), "{status}");
    let (table, _) = cli(&["cluster", "status"]);
    assert!(table.contains("term") && table.contains("lag"), "{table}");
    let (lines, resume) = cli(&["log", "--from", "0"]);
    assert!(resume.contains("next index:"), "{resume}");
    let logged: Vec<Value> = lines.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let logged = writes(&logged);
    for (origin, files) in &performed {
        let (once, _, repeats) = reconcile(files, &logged);
        assert_eq!(repeats, 0, "the log holds node {origin}'s writes at most once");
        if *origin != leader {
            assert_eq!(once, files.len(), "the log holds every write of node {origin}");
        }
    }
    for vexevent in running.into_values() {
        let finished = vexevent.stop();
        assert!(finished.exit_ok, "{:?}", finished.stderr);
    }
    assert!(restarted.stop().exit_ok);
}

#[test]
fn eventual_a_node_without_a_quorum_delivers_its_own_events_at_once_and_every_node_gets_them_once() {
    let Some(_serial) = exclusive_root_test(
        "eventual_a_node_without_a_quorum_delivers_its_own_events_at_once_and_every_node_gets_them_once",
    ) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let nodes = cluster_with(base.path(), "consistency = \"eventual\"", |_, _, addr| addr);
    let running = start_cluster(&nodes);
    // Nodes 2 and 3 stop: node 1 has no quorum, nothing can commit.
    running[&2].signal(libc::SIGSTOP);
    running[&3].signal(libc::SIGSTOP);
    let never = AtomicBool::new(false);
    let alone = workload(&nodes[0].watch, "alone", 100, &never);
    wait_until("node 1 to deliver its own writes without a quorum", || {
        reconcile(&alone, &writes(&running[&1].events_so_far())).1 == 0
    });
    running[&2].signal(libc::SIGCONT);
    running[&3].signal(libc::SIGCONT);
    let mut performed: BTreeMap<u64, Performed> = BTreeMap::new();
    performed.insert(1, alone);
    for node in &nodes[1..] {
        performed.insert(node.id, workload(&node.watch, "later", 100, &never));
    }
    for (id, vexevent) in &running {
        wait_until(&format!("node {id} to hold every node's writes"), || {
            let delivered = writes(&vexevent.events_so_far());
            performed.values().all(|files| reconcile(files, &delivered).1 == 0)
        });
        let delivered = writes(&vexevent.events_so_far());
        for (origin, files) in &performed {
            assert_eq!(
                reconcile(files, &delivered),
                (files.len(), 0, 0),
                "node {id} holds node {origin}'s writes once each (its own not again once committed)"
            );
        }
    }
    for vexevent in running.into_values() {
        let finished = vexevent.stop();
        assert!(finished.exit_ok, "{:?}", finished.stderr);
        for name in ["cluster_dropped_buffer_full", "cluster_dropped_shutdown"] {
            assert_eq!(finished.stats["userspace"][name], 0, "{name}");
        }
    }
}

/// The write events of `events` with their hybrid logical clock and origin node, in output order.
fn stamped_writes(events: &[Value]) -> Vec<(PathBuf, String, Option<u64>)> {
    events
        .iter()
        .filter(|e| e["event_type"] == "FilesystemWrite")
        .filter_map(|e| {
            let path = PathBuf::from(
                String::from_utf8(event_path_bytes(&e["context"]["filesystem"]["path"])?).ok()?,
            );
            Some((path, e["origin"]["node"].as_str()?.to_owned(), e["timestamp"]["hlc"].as_u64()))
        })
        .collect()
}

#[test]
fn causal_every_event_carries_a_clock_and_what_a_node_had_seen_comes_first_on_every_node() {
    let Some(_serial) = exclusive_root_test(
        "causal_every_event_carries_a_clock_and_what_a_node_had_seen_comes_first_on_every_node",
    ) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let nodes = cluster_with(base.path(), "consistency = \"causal\"", |_, _, addr| addr);
    let running = start_cluster(&nodes);
    let never = Arc::new(AtomicBool::new(false));
    // Load on every node; meanwhile node 1 writes A, node 2 sees A, then writes B.
    let loads: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (dir, stop) = (node.watch.clone(), Arc::clone(&never));
            (node.id, std::thread::spawn(move || workload(&dir, "load", 500, &stop)))
        })
        .collect();
    let a = nodes[0].watch.join("A");
    std::fs::write(&a, b"first").unwrap();
    wait_until("node 2 to deliver A", || {
        stamped_writes(&running[&2].events_so_far()).iter().any(|w| w.0 == a)
    });
    let b = nodes[1].watch.join("B");
    std::fs::write(&b, b"after A").unwrap();
    let mut performed: BTreeMap<u64, Performed> = BTreeMap::new();
    for (id, thread) in loads {
        performed.insert(id, thread.join().unwrap());
    }
    for (id, vexevent) in &running {
        wait_until(&format!("node {id} to hold every write"), || {
            let delivered = writes(&vexevent.events_so_far());
            reconcile(std::slice::from_ref(&b), &delivered).1 == 0
                && performed.values().all(|f| reconcile(f, &delivered).1 == 0)
        });
        let stamped = stamped_writes(&vexevent.events_so_far());
        assert!(stamped.iter().all(|w| w.2.is_some()), "node {id}: every event carries its clock");
        let position = |path: &Path| stamped.iter().position(|w| w.0 == path).unwrap();
        let (pa, pb) = (position(&a), position(&b));
        assert!(pa < pb, "node {id}: A (seen by node 2) comes before B (captured by node 2 after)");
        assert!(stamped[pa].2 < stamped[pb].2, "node {id}: A's clock is below B's");
        for node in ["n1", "n2", "n3"] {
            let clocks: Vec<u64> = stamped.iter().filter(|w| w.1 == node).filter_map(|w| w.2).collect();
            assert!(clocks.windows(2).all(|w| w[0] < w[1]), "node {id}: {node}'s events in capture order");
        }
        // Events below a clock already delivered: what the member counts late.
        let mut highest = 0;
        let inversions = stamped
            .iter()
            .filter_map(|w| w.2)
            .filter(|&clock| {
                let below = clock < highest;
                highest = highest.max(clock);
                below
            })
            .count();
        let stats: Value = serde_json::from_str(&api(vexevent, "/api/v1/control/stats").unwrap()).unwrap();
        let late = stats["userspace"]["cluster_causal_late"].as_u64().unwrap();
        eprintln!(
            "causal: node {id}: {} writes, {inversions} out of clock order, {late} counted late",
            stamped.len()
        );
        assert!(inversions as u64 <= late, "node {id}: every event out of clock order is counted late");
        assert_eq!(stats["userspace"]["cluster_causal_clock_ahead"], 0, "node {id}: one machine, one clock");
    }
    for vexevent in running.into_values() {
        assert!(vexevent.stop().exit_ok);
    }
}

/// `name` among the cluster totals `member` shows in `vexevent cluster status`.
fn cluster_total(member: &Vexevent, name: &str) -> u64 {
    status(member).and_then(|s| s["counters"][name].as_u64()).unwrap_or(0)
}

/// `name` among `member`'s own userspace counters.
fn own_counter(member: &Vexevent, name: &str) -> u64 {
    api(member, "/api/v1/control/stats")
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|stats| stats["userspace"][name].as_u64())
        .unwrap_or(0)
}

#[test]
fn session_readers_never_see_less_and_cluster_counters_sum_every_node_and_converge_after_a_stop() {
    let Some(_serial) = exclusive_root_test(
        "session_readers_never_see_less_and_cluster_counters_sum_every_node_and_converge_after_a_stop",
    ) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let nodes = cluster_with(base.path(), "consistency = \"session\"", |_, _, addr| addr);
    let running = start_cluster(&nodes);
    let never = AtomicBool::new(false);
    for node in &nodes {
        workload(&node.watch, "a", 100, &never);
    }
    // The totals: every node's count of translated events, summed, the same on every node.
    let sum = || running.values().map(|v| own_counter(v, "events_translated")).sum::<u64>();
    wait_until("every node to show the sum of every node's counters", || {
        let expected = sum();
        expected >= 300 && running.values().all(|v| cluster_total(v, "events_translated") == expected)
    });
    let metrics = api(&running[&1], "/metrics").unwrap();
    assert!(metrics.contains("vexevent_cluster_total{counter=\"events_translated\"}"), "{metrics}");
    let (ok, table, _) = cli(&running[&2], &["cluster", "status"]);
    assert!(ok && table.contains("cluster totals") && table.contains("events_translated"), "{table}");

    // A session: what a reader saw on node 1 it gets on node 3, which waits for it.
    let (ok, seen, resume) = cli(&running[&1], &["log", "--from", "0"]);
    assert!(ok, "{resume}");
    let session: u64 = resume.lines().find_map(|l| l.strip_prefix("session: ")?.parse().ok()).unwrap();
    assert!(session > 0, "{resume}");
    let (ok, again, resume) = cli(&running[&3], &["log", "--from", "0", "--session", &session.to_string()]);
    assert!(ok, "{resume}");
    assert!(again.lines().count() >= seen.lines().count(), "node 3 shows no less than node 1 showed");
    // A session ahead of what is committed: refused after the wait, with the reason.
    let ahead = (session + 1_000_000).to_string();
    let (ok, _, refused) =
        cli(&running[&3], &["log", "--from", "0", "--session", &ahead, "--wait-ms", "300"]);
    assert!(!ok && refused.contains("the session saw index") && refused.contains("ask again"), "{refused}");
    // A session just ahead: the reader waits until the node applies it (a write commits it).
    let waiting = {
        let (addr, token) = (running[&2].served_address("http://"), running[&2].token_file());
        let next = (session + 1).to_string();
        std::thread::spawn(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_vexevent"))
                .args([
                    "log",
                    "--from",
                    "0",
                    "--session",
                    &next,
                    "--wait-ms",
                    "60000",
                    "--control-addr",
                    &addr,
                ])
                .arg("--token-file")
                .arg(token)
                .output()
                .unwrap()
        })
    };
    workload(&nodes[0].watch, "b", 1, &never);
    let waited = waiting.join().unwrap();
    assert!(waited.status.success(), "{}", String::from_utf8_lossy(&waited.stderr));

    // Node 3 stops; nodes 1 and 2 count on; once node 3 runs again its totals converge.
    let third = own_counter(&running[&3], "events_translated");
    running[&3].signal(libc::SIGSTOP);
    workload(&nodes[0].watch, "c", 200, &never);
    let expected = wait_for_value(|| {
        let now = third
            + own_counter(&running[&1], "events_translated")
            + own_counter(&running[&2], "events_translated");
        let total = cluster_total(&running[&1], "events_translated");
        (total >= now).then_some(total)
    });
    running[&3].signal(libc::SIGCONT);
    let resumed = Instant::now();
    wait_until("node 3's totals to converge", || {
        cluster_total(&running[&3], "events_translated") >= expected
    });
    let converged = resumed.elapsed();
    eprintln!("cluster totals: node 3 converged {converged:?} after it ran again");
    assert!(converged < Duration::from_secs(1), "converged in {converged:?}");
    for vexevent in running.into_values() {
        assert!(vexevent.stop().exit_ok);
    }
}

/// Polls `value` until it gives something (deadline, no fixed sleep).
fn wait_for_value<T>(mut value: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = value() {
            return value;
        }
        assert!(Instant::now() < end, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Proxies between members (`links[&(from, to)]` carries what `from` sends to `to`).
struct Links(BTreeMap<(u64, u64), Proxy>);

impl Links {
    /// Cuts every link between `side` and the other members, both ways.
    fn partition(&self, side: &[u64]) {
        for ((from, to), proxy) in &self.0 {
            if side.contains(from) != side.contains(to) {
                proxy.cut();
            }
        }
    }

    /// Cuts every link: no member reaches another.
    fn isolate_all(&self) {
        self.0.values().for_each(Proxy::cut);
    }

    fn heal(&self) {
        self.0.values().for_each(Proxy::heal);
    }
}

/// A member and every run of it: the outputs of its earlier runs (killed or stopped) and the
/// running one.
struct Member {
    node: Node,
    running: Option<Vexevent>,
    earlier: Vec<Vec<(PathBuf, String, String)>>,
    /// Killed at least once: what it had captured and not committed is lost unreported.
    killed: bool,
}

/// Files written under load, per member, paced (`RATE` a second each) until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<(u64, std::thread::JoinHandle<Performed>)>,
}

/// Files each member's workload writes a second under load.
const RATE: u64 = 200;

impl Load {
    fn start(members: &BTreeMap<u64, Member>, prefix: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = members
            .values()
            .map(|member| {
                let (dir, stop, prefix) = (member.node.watch.clone(), Arc::clone(&stop), prefix.to_owned());
                let thread = std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut written = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let due = u64::try_from(started.elapsed().as_millis()).unwrap() * RATE / 1000;
                        if (written.len() as u64) < due {
                            let path = dir.join(format!("{prefix}{}", written.len()));
                            std::fs::write(&path, b"replicate").unwrap();
                            written.push(path);
                        } else {
                            // Pacing the load generator, not waiting for a result.
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                    written
                });
                (member.node.id, thread)
            })
            .collect();
        Self { stop, threads }
    }

    fn finish(self, performed: &mut BTreeMap<u64, Performed>) {
        self.stop.store(true, Ordering::Relaxed);
        for (id, thread) in self.threads {
            performed.entry(id).or_default().extend(thread.join().unwrap());
        }
    }
}

/// Three members whose peer traffic goes through fault-injecting proxies, started, with a
/// leader they agree on.
fn proxied_cluster(base: &Path) -> (BTreeMap<u64, Member>, Links) {
    let mut links = BTreeMap::new();
    let nodes = cluster_with(base, "", |from, to, real| {
        let proxy = Proxy::start(real);
        let addr = proxy.addr;
        links.insert((from, to), proxy);
        addr
    });
    let members: BTreeMap<u64, Member> = nodes
        .into_iter()
        .map(|node| {
            let running = Some(start(&node));
            (node.id, Member { node, running, earlier: Vec::new(), killed: false })
        })
        .collect();
    agreed_leader(&members);
    (members, Links(links))
}

/// Waits for a leader every running member names; returns it.
fn agreed_leader(members: &BTreeMap<u64, Member>) -> u64 {
    let mut leader = None;
    wait_until("a leader every member agrees on", || {
        let leaders: Vec<Option<u64>> =
            members.values().filter_map(|m| m.running.as_ref()).map(leader_of).collect();
        leader = leaders[0];
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    });
    leader.unwrap()
}

impl Member {
    fn running(&self) -> &Vexevent {
        self.running.as_ref().expect("the member runs")
    }

    /// Every write its runs delivered, the running one's last.
    fn delivered(&self) -> Vec<(PathBuf, String, String)> {
        let mut all: Vec<_> = self.earlier.iter().flatten().cloned().collect();
        if let Some(running) = &self.running {
            all.extend(writes(&running.events_so_far()));
        }
        all
    }

    fn kill(&mut self) {
        let running = self.running.take().expect("the member runs");
        running.signal(libc::SIGKILL);
        // Its output as the sinks left it once it is dead (a zombie until dropped).
        wait_until("the killed member to die", || {
            std::fs::read_to_string(format!("/proc/{}/stat", running.pid())).is_ok_and(|stat| {
                stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
        });
        self.earlier.push(writes(&read_events(&running.output)));
        self.killed = true;
    }

    fn restart(&mut self) {
        assert!(self.running.is_none());
        self.running = Some(start(&self.node));
    }
}

/// Waits until the members converge after faults: every running member delivered the same
/// writes, and every write of a member never killed is delivered or reported lost by it; then
/// checks that no run of any member delivered an event twice or one nobody performed. Prints a
/// line per member and origin.
fn converge_and_check(members: &BTreeMap<u64, Member>, performed: &BTreeMap<u64, Performed>, what: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        let delivered: Vec<HashSet<PathBuf>> =
            members.values().map(|m| m.delivered().into_iter().map(|(path, _, _)| path).collect()).collect();
        let agree = delivered.iter().all(|d| *d == delivered[0]);
        let complete = members.values().filter(|m| !m.killed).all(|m| {
            let files = &performed[&m.node.id];
            let missing = files.iter().filter(|f| !delivered[0].contains(*f)).count() as u64;
            missing <= reported_lost(m.running())
        });
        if agree && complete {
            break;
        }
        assert!(
            Instant::now() < end,
            "{what}: the members did not converge (agree {agree}, complete {complete}): {:?}",
            members.values().map(|m| (m.node.id, m.running.as_ref().and_then(status))).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for member in members.values() {
        let runs: Vec<Vec<(PathBuf, String, String)>> = member
            .earlier
            .iter()
            .cloned()
            .chain(member.running.as_ref().map(|r| writes(&r.events_so_far())))
            .collect();
        for run in &runs {
            let mut ids = HashSet::new();
            let repeats: Vec<&String> =
                run.iter().map(|(_, _, id)| id).filter(|id| !ids.insert(*id)).collect();
            assert!(repeats.is_empty(), "{what}: member {} delivered {repeats:?} twice", member.node.id);
        }
        let all: HashSet<&PathBuf> = performed.values().flatten().collect();
        let delivered = member.delivered();
        assert!(
            delivered.iter().all(|(path, _, _)| all.contains(path)),
            "{what}: member {} delivered a write nobody performed",
            member.node.id
        );
        for (origin, files) in performed {
            let (once, missing, _) = reconcile(files, &delivered);
            let lost = members[origin].running.as_ref().map_or(0, reported_lost);
            eprintln!(
                "{what}: member {}: writes of n{origin}: performed {}, delivered {once}, missing {missing}{}",
                member.node.id,
                files.len(),
                if members[origin].killed {
                    " (killed: what it had not committed and what was written while it was down are not captured)".to_owned()
                } else {
                    format!(", reported lost {lost}")
                }
            );
        }
    }
}

/// Writes `name` in `member`'s directory (recorded as performed) and waits until that write is
/// delivered by `member`: how long a write takes to be accepted and committed.
fn marker_committed_in(member: &Member, name: &str, performed: &mut BTreeMap<u64, Performed>) -> Duration {
    let path = write_marker(member, name, performed);
    let started = Instant::now();
    wait_until(&format!("{name} to commit"), || delivered_by(member, &path));
    started.elapsed()
}

/// Writes `name` in `member`'s directory, recorded as performed.
fn write_marker(member: &Member, name: &str, performed: &mut BTreeMap<u64, Performed>) -> PathBuf {
    let path = member.node.watch.join(name);
    std::fs::write(&path, b"marker").unwrap();
    performed.entry(member.node.id).or_default().push(path.clone());
    path
}

/// Whether `member`'s running output holds a write of `path` (a text search: the outputs grow
/// large under load, and the path is a plain string in JSON).
fn delivered_by(member: &Member, path: &Path) -> bool {
    let needle = format!("\"path\":\"{}\"", path.display());
    member
        .running
        .as_ref()
        .is_some_and(|r| std::fs::read_to_string(&r.output).unwrap_or_default().contains(&needle))
}

/// Why `member` says it refuses strong writes, once it says so.
fn refusal(member: &Member) -> String {
    let mut why = String::new();
    wait_until(&format!("member {} to refuse strong writes", member.node.id), || {
        why = status(member.running())
            .and_then(|s| s["writes_refused"].as_str().map(str::to_owned))
            .unwrap_or_default();
        !why.is_empty()
    });
    why
}

#[test]
fn a_stopped_leader_is_replaced_under_load_and_rejoins_when_continued() {
    let Some(_serial) =
        exclusive_root_test("a_stopped_leader_is_replaced_under_load_and_rejoins_when_continued")
    else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let (members, _links) = proxied_cluster(base.path());
    let mut performed = BTreeMap::new();
    let load = Load::start(&members, "s");
    let leader = agreed_leader(&members);
    let survivor = *members.keys().find(|&&id| id != leader).unwrap();
    let before = members[&survivor].delivered().len();
    wait_until("the load to reach the cluster", || members[&survivor].delivered().len() > before + 300);
    members[&leader].running().signal(libc::SIGSTOP);
    let accepted_in = marker_committed_in(&members[&survivor], "after-stop", &mut performed);
    let elected = leader_of(members[&survivor].running()).unwrap();
    assert_ne!(elected, leader, "the stopped member cannot lead");
    eprintln!(
        "SIGSTOP of leader {leader}: a write on member {survivor} committed {accepted_in:?} after it (new leader {elected})"
    );
    // Continued under load, the old leader steps down, follows the new one and commits again.
    members[&leader].running().signal(libc::SIGCONT);
    wait_until("the continued member to follow the new leader", || {
        leader_of(members[&leader].running()).is_some_and(|l| l != leader)
    });
    let own_in = marker_committed_in(&members[&leader], "after-continue", &mut performed);
    eprintln!("the continued member {leader} commits its own writes again ({own_in:?} for one)");
    load.finish(&mut performed);
    converge_and_check(&members, &performed, "SIGSTOP");
    for member in members.into_values() {
        let finished = member.running.unwrap().stop();
        assert!(finished.exit_ok, "{:?}", finished.stderr);
    }
}

#[test]
fn a_partitioned_minority_refuses_strong_writes_and_the_majority_goes_on() {
    let Some(_serial) =
        exclusive_root_test("a_partitioned_minority_refuses_strong_writes_and_the_majority_goes_on")
    else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let (members, links) = proxied_cluster(base.path());
    let mut performed = BTreeMap::new();
    let load = Load::start(&members, "p");
    for phase in ["a follower", "the leader"] {
        let leader = agreed_leader(&members);
        let cut =
            if phase == "the leader" { leader } else { *members.keys().find(|&&id| id != leader).unwrap() };
        let majority: Vec<u64> = members.keys().copied().filter(|&id| id != cut).collect();
        links.partition(&[cut]);
        let cut_at = Instant::now();
        let why = refusal(&members[&cut]);
        let stranded = write_marker(&members[&cut], &format!("stranded-{cut}"), &mut performed);
        let accepted_in =
            marker_committed_in(&members[&majority[0]], &format!("majority-{cut}"), &mut performed);
        eprintln!(
            "partition of {phase} (member {cut}): it refuses strong writes ({why}); the majority committed a write {:?} after the cut ({accepted_in:?} for it)",
            cut_at.elapsed()
        );
        // The minority's write waits in its buffer: delivered nowhere while it is cut off.
        let majority_leader = leader_of(members[&majority[0]].running()).unwrap();
        assert_ne!(majority_leader, cut, "the majority follows one of its own");
        for member in members.values() {
            assert!(
                !delivered_by(member, &stranded),
                "{phase}: the cut-off write was delivered by {} before the heal",
                member.node.id
            );
            if member.node.id != cut {
                assert!(
                    status(member.running()).is_some_and(|s| s["writes_refused"].is_null()),
                    "{phase}: member {} of the majority refuses writes",
                    member.node.id
                );
            }
        }
        links.heal();
        let healed = Instant::now();
        wait_until("the cut-off write to commit after the heal", || {
            members.values().all(|m| delivered_by(m, &stranded))
        });
        eprintln!(
            "partition of {phase} healed: the cut-off write committed on every member {:?} later",
            healed.elapsed()
        );
    }
    // No majority anywhere: every member refuses, nothing commits, until the links heal.
    links.isolate_all();
    let stranded: Vec<PathBuf> = members
        .values()
        .map(|member| {
            let why = refusal(member);
            eprintln!("every member cut off: member {} refuses strong writes ({why})", member.node.id);
            write_marker(member, &format!("alone-{}", member.node.id), &mut performed)
        })
        .collect();
    // Long enough for an election timeout to pass twice on every side.
    let cut_at = Instant::now();
    while cut_at.elapsed() < Duration::from_secs(2) {
        for member in members.values() {
            assert!(
                stranded.iter().all(|path| !delivered_by(member, path)),
                "a write committed without a majority"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    links.heal();
    wait_until("the writes of every member to commit after the heal", || {
        members.values().all(|m| stranded.iter().all(|path| delivered_by(m, path)))
    });
    load.finish(&mut performed);
    converge_and_check(&members, &performed, "partitions");
    for member in members.into_values() {
        let finished = member.running.unwrap().stop();
        assert!(finished.exit_ok, "{:?}", finished.stderr);
    }
}

/// One fault of a randomized schedule.
#[derive(Clone, Copy, Debug)]
enum Fault {
    StopLeader,
    StopFollower,
    IsolateLeader,
    IsolateFollower,
    IsolateAll,
    KillLeader,
    KillFollower,
}

const FAULTS: [Fault; 7] = [
    Fault::StopLeader,
    Fault::StopFollower,
    Fault::IsolateLeader,
    Fault::IsolateFollower,
    Fault::IsolateAll,
    Fault::KillLeader,
    Fault::KillFollower,
];

/// xorshift64*: the schedule's choices, reproducible from the seed printed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Randomized faults under load: each schedule applies one or two faults (pauses, partitions,
/// kills and restarts) for a random time, recovers, and checks that the members converge with
/// nothing committed lost or delivered twice. `VEXEVENT_CHAOS_SCHEDULES` (default 2) schedules,
/// `VEXEVENT_CHAOS_SEED` to replay one run (`cargo xtask chaos --schedules N`).
#[test]
fn randomized_faults_keep_every_committed_event_once() {
    let Some(_serial) = exclusive_root_test("randomized_faults_keep_every_committed_event_once") else {
        return;
    };
    let schedules: u64 =
        std::env::var("VEXEVENT_CHAOS_SCHEDULES").ok().and_then(|n| n.parse().ok()).unwrap_or(2);
    let seed: u64 =
        std::env::var("VEXEVENT_CHAOS_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or_else(|| {
            u64::try_from(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros(),
            )
            .unwrap()
                | 1
        });
    eprintln!("chaos: {schedules} schedules, seed {seed} (VEXEVENT_CHAOS_SEED={seed} replays them)");
    let mut random = seed;
    let base = tempfile::tempdir().unwrap();
    let (mut members, links) = proxied_cluster(base.path());
    let mut performed = BTreeMap::new();
    for schedule in 1..=schedules {
        let load = Load::start(&members, &format!("c{schedule}-"));
        let faults: Vec<Fault> = (0..=next_random(&mut random) % 2)
            .map(|_| FAULTS[usize::try_from(next_random(&mut random) % FAULTS.len() as u64).unwrap()])
            .collect();
        let hold = Duration::from_millis(200 + next_random(&mut random) % 1_800);
        eprintln!("chaos: schedule {schedule}: {faults:?}, held {hold:?}");
        let mut stopped = Vec::new();
        let mut killed = Vec::new();
        for fault in faults {
            let leader = leader_of_running(&members, &stopped);
            let follower =
                *members.keys().find(|&&id| id != leader && members[&id].running.is_some()).unwrap();
            match fault {
                Fault::StopLeader | Fault::StopFollower => {
                    let id = if matches!(fault, Fault::StopLeader) { leader } else { follower };
                    if !stopped.contains(&id) && !killed.contains(&id) {
                        members[&id].running().signal(libc::SIGSTOP);
                        stopped.push(id);
                    }
                }
                Fault::IsolateLeader => links.partition(&[leader]),
                Fault::IsolateFollower => links.partition(&[follower]),
                Fault::IsolateAll => links.isolate_all(),
                Fault::KillLeader | Fault::KillFollower => {
                    let id = if matches!(fault, Fault::KillLeader) { leader } else { follower };
                    if !killed.contains(&id) {
                        if stopped.contains(&id) {
                            members[&id].running().signal(libc::SIGCONT);
                            stopped.retain(|&s| s != id);
                        }
                        members.get_mut(&id).unwrap().kill();
                        killed.push(id);
                    }
                }
            }
            let applied_at = Instant::now();
            // The fault's duration is the schedule, not a wait for a result.
            while applied_at.elapsed() < hold / 2 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for id in stopped {
            members[&id].running().signal(libc::SIGCONT);
        }
        links.heal();
        for id in killed {
            members.get_mut(&id).unwrap().restart();
        }
        agreed_leader(&members);
        load.finish(&mut performed);
        converge_and_check(&members, &performed, &format!("chaos schedule {schedule}"));
        eprintln!("chaos: schedule {schedule} survived");
    }
    eprintln!("chaos: {schedules} of {schedules} schedules survived (seed {seed})");
    for member in members.into_values() {
        let finished = member.running.unwrap().stop();
        assert!(finished.exit_ok, "{:?}", finished.stderr);
    }
}

/// The leader a running member that is not stopped names (faults already applied may leave
/// them disagreeing, or without one: then the first such member).
fn leader_of_running(members: &BTreeMap<u64, Member>, stopped: &[u64]) -> u64 {
    let answering = || members.values().filter(|m| m.running.is_some() && !stopped.contains(&m.node.id));
    answering()
        .find_map(|m| leader_of(m.running()))
        .filter(|leader| members[leader].running.is_some())
        .or_else(|| answering().next().map(|m| m.node.id))
        .unwrap_or_else(|| members.values().find(|m| m.running.is_some()).unwrap().node.id)
}

/// A `vexevent log --follow` this test started against a member, and the lines it printed.
struct Follower {
    child: std::process::Child,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

/// An event line of a follow stream: its entry, its offset there and its origin id.
fn position(line: &str) -> (u64, u64, String) {
    let value: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    (
        value["index"].as_u64().unwrap(),
        value["offset"].as_u64().unwrap(),
        value["event"]["origin"]["id"].as_str().unwrap().to_owned(),
    )
}

impl Follower {
    fn start(member: &Vexevent, from: u64, skip: u64) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vexevent"))
            .args(["log", "--follow", "--from", &from.to_string(), "--skip", &skip.to_string()])
            .args(["--control-addr", &member.served_address("http://")])
            .arg("--token-file")
            .arg(member.token_file())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                shared.lock().unwrap().push(line);
            }
        });
        Self { child, lines, reader }
    }

    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn printed(&self, needle: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|line| line.contains(needle))
    }

    /// Waits until it exits by itself: whether it succeeded, its lines, its stderr.
    fn ended(mut self) -> (bool, Vec<String>, String) {
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        let status = self.child.wait().unwrap();
        self.reader.join().unwrap();
        (status.success(), std::mem::take(&mut *self.lines.lock().unwrap()), stderr)
    }

    /// Stops it (SIGKILL, its pid): its lines.
    fn stop(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.ended().1
    }
}

/// Reads `count` messages of a stream socket (deadline).
async fn messages(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    count: usize,
    mut done: impl FnMut(&str) -> bool,
) -> Vec<String> {
    use futures_util::StreamExt as _;
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while read.len() < count {
        let next = tokio::time::timeout_at(deadline, socket.next()).await;
        let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) = next else {
            panic!("the stream ended after {} messages: {next:?}", read.len())
        };
        read.push(text.to_string());
        if done(&text) {
            break;
        }
    }
    read
}

/// The answer to a stream request the server refuses: status and body.
async fn refused(url: String) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        other => panic!("expected a refusal, got {:?}", other.map(|_| "a connection")),
    }
}

#[test]
fn follow_streams_the_log_live_and_resumes_on_another_member_after_a_kill_without_loss_or_repeats() {
    let Some(_serial) = exclusive_root_test(
        "follow_streams_the_log_live_and_resumes_on_another_member_after_a_kill_without_loss_or_repeats",
    ) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    let nodes = cluster(base.path());
    let mut running = agreed(
        nodes
            .iter()
            .map(|node| {
                let config = node.config.to_str().unwrap();
                let extra =
                    ["--config", config, "--control-addr", "127.0.0.1:0", "--stream-addr", "127.0.0.1:0"];
                (node.id, Vexevent::start(&[&node.watch], &extra))
            })
            .collect(),
    );
    // A reader follows member 1 while every member's workload runs; member 1 is killed.
    let first = Follower::start(&running[&1], 0, 0);
    let stop = AtomicBool::new(false);
    let (ended, second) = std::thread::scope(|scope| {
        for node in &nodes {
            let stop = &stop;
            scope.spawn(move || workload(&node.watch, "f", 3_000, stop));
        }
        wait_until("the reader to print 300 events", || first.count() >= 300);
        running[&1].signal(libc::SIGKILL);
        let ended = first.ended();
        let (ok, lines, stderr) = &ended;
        assert!(!ok && !lines.is_empty(), "{stderr}");
        // It resumes on member 2 from the position after the last line it printed.
        let (index, offset, _) = position(lines.last().unwrap());
        assert!(stderr.contains(&format!("resume: --from {index} --skip {}", offset + 1)), "{stderr}");
        let second = Follower::start(&running[&2], index, offset + 1);
        wait_until("the resumed reader to print 300 events", || second.count() >= 300);
        stop.store(true, Ordering::Relaxed);
        (ended, second)
    });
    // A last write, to know when the resumed reader has everything before it.
    std::fs::write(nodes[1].watch.join("follow-marker"), b"m").unwrap();
    let written = Instant::now();
    wait_until("the resumed reader to print the marker", || second.printed("follow-marker"));
    let printed = written.elapsed();
    let second = second.stop();
    let union: Vec<(u64, u64, String)> = ended.1.iter().chain(&second).map(|line| position(line)).collect();
    let marker = second.iter().position(|line| line.contains("follow-marker")).unwrap() + ended.1.len();
    let union = &union[..=marker];
    let (marker_index, _, _) = union[marker];
    eprintln!(
        "follow: {} events before the kill, {} after on another member, through log index \
         {marker_index}; the last write printed {printed:?} after it was made",
        ended.1.len(),
        second.len()
    );
    // Positions run on without a gap (every event of an entry, offsets from 0).
    for pair in union.windows(2) {
        let ((a, k, _), (b, l, _)) = (&pair[0], &pair[1]);
        assert!((b == a && *l == k + 1) || (b > a && *l == 0), "{:?} then {:?}", pair[0], pair[1]);
    }
    // The union is the committed log as member 3 serves it, event for event.
    let session = marker_index.to_string();
    let (ok, log, resume) = cli(&running[&3], &["log", "--from", "0", "--session", &session]);
    assert!(ok, "{resume}");
    let committed: Vec<String> = log
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["origin"]["id"].as_str().unwrap().to_owned())
        .collect();
    let followed: Vec<&String> = union.iter().map(|(_, _, id)| id).collect();
    assert!(committed.len() >= followed.len(), "member 3 shows {} events", committed.len());
    assert_eq!(followed, committed.iter().take(followed.len()).collect::<Vec<_>>(), "no loss, no repeat");
    assert_eq!(followed.iter().collect::<HashSet<_>>().len(), followed.len());

    // The stream server of member 3: the log from a position, after a session from member 2.
    let addr = running[&3].served_address("ws://");
    let token = running[&3].token();
    let url = |query: &str| format!("ws://{addr}/api/v1/semantic/events/stream?token={token}&{query}");
    let (resumed_index, resumed_offset, _) = position(&second[0]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let query =
            format!("from={resumed_index}&skip={resumed_offset}&session={marker_index}&wait_ms=30000");
        let mut socket = tokio_tungstenite::connect_async(url(&query)).await.unwrap().0;
        let served = messages(&mut socket, marker + 1 - ended.1.len(), |_| false).await;
        let served: Vec<_> = served.iter().map(|line| position(line)).collect();
        assert_eq!(served, union[ended.1.len()..], "the stream serves what the resumed reader printed");
        // A session this member has not applied: refused after the wait, with the reason.
        let ahead = marker_index + 1_000_000;
        let (status, why) = refused(url(&format!("session={ahead}&wait_ms=300"))).await;
        assert!(status == 503 && why.contains("the session saw index"), "{status} {why}");
        // Selecting events of the live stream does not mix with the log.
        let (status, why) = refused(url("from=0&event_types=FilesystemWrite")).await;
        assert!(status == 400 && why.contains("event_types= selects"), "{status} {why}");
        // The live stream with the session: opens once applied; a new write on member 2 arrives.
        let mut live =
            tokio_tungstenite::connect_async(url(&format!("session={marker_index}"))).await.unwrap().0;
        std::fs::write(nodes[1].watch.join("after-session"), b"s").unwrap();
        let got = messages(&mut live, usize::MAX, |text| text.contains("after-session")).await;
        assert!(got.last().unwrap().contains("after-session"));
    });
    // A member that stops answering without closing (SIGSTOP): after 30 s without a line (not
    // even a heartbeat) the reader gives up and says where to resume.
    let hung = Follower::start(&running[&3], marker_index + 1, 0);
    running[&3].signal(libc::SIGSTOP);
    let (ok, _, stderr) = hung.ended();
    running[&3].signal(libc::SIGCONT);
    assert!(!ok && stderr.contains("sent nothing for 30 s") && stderr.contains("resume: --from"), "{stderr}");
    for id in [2, 3] {
        assert!(running.remove(&id).unwrap().stop().exit_ok);
    }
}

/// A follow request on the control API at `addr` (with `token`), read at most `slow_bytes` at a time with a pause
/// between reads (a reader slower than the workload) until `fast` is set, then at full speed;
/// returns the stream's JSON lines once one says why it ended.
fn slow_follow(addr: &str, token: &str, slow_bytes: usize, fast: &AtomicBool) -> Vec<String> {
    use std::io::{Read as _, Write as _};
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    let request = format!(
        "GET /api/v1/cluster/log?from=0&follow=true HTTP/1.1\r\nhost: vexevent\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut received = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    // The lines of the chunked body (each chunk is whole lines; chunk sizes are lines of their own).
    let lines = |received: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(received).lines().filter(|l| l.starts_with('{')).map(str::to_owned).collect()
    };
    loop {
        let want = if fast.load(Ordering::Relaxed) { buffer.len() } else { slow_bytes };
        let read = socket.read(&mut buffer[..want]).unwrap();
        assert!(read > 0, "the member closed the stream: {:?}", lines(&received).last());
        received.extend_from_slice(&buffer[..read]);
        if received.ends_with(b"\n") && lines(&received).last().is_some_and(|l| l.starts_with("{\"error\"")) {
            return lines(&received);
        }
        if !fast.load(Ordering::Relaxed) {
            // The pace of a slow reader, not a wait for something.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_follower_the_compaction_overtakes_is_told_the_first_retained_index() {
    let Some(_serial) =
        exclusive_root_test("a_follower_the_compaction_overtakes_is_told_the_first_retained_index")
    else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    // A snapshot after 1 MiB of events (about 16,000), the log purged up to it.
    let nodes = cluster_with(base.path(), "snapshot_bytes = 1048576\nkeep_entries = 0", |_, _, addr| addr);
    let running = start_cluster(&nodes);
    let (fast, never) = (AtomicBool::new(false), AtomicBool::new(false));
    let (addr, token) = (running[&1].served_address("http://"), running[&1].token());
    let lines = std::thread::scope(|scope| {
        let reader = scope.spawn(|| slow_follow(&addr, &token, 2048, &fast));
        let workloads: Vec<_> = nodes
            .iter()
            .map(|node| {
                let never = &never;
                scope.spawn(move || workload(&node.watch, "c", 7_000, never))
            })
            .collect();
        for workload in workloads {
            workload.join().unwrap();
        }
        wait_until("member 1 to compact its log", || {
            status(&running[&1]).is_some_and(|s| s["first_index"].as_u64().unwrap_or(0) > 0)
        });
        fast.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    let (end, events) = lines.split_last().unwrap();
    let end: Value = serde_json::from_str(end).unwrap();
    let why = end["error"].as_str().unwrap();
    let first: u64 = why.rsplit(' ').next().unwrap().parse().unwrap();
    let next = end["next"].as_u64().unwrap();
    eprintln!("follow: a slow reader got {} events, then: {why}", events.len());
    assert!(why.contains("is compacted; the first retained index is") && next < first, "{end}");
    // It had every event before the entry it was told of, in order, and none after.
    for (k, pair) in events.windows(2).enumerate() {
        let ((a, i, _), (b, j, _)) = (position(&pair[0]), position(&pair[1]));
        assert!((b == a && j == i + 1) || (b > a && j == 0), "line {k}: {a}.{i} then {b}.{j}");
    }
    assert!(events.last().is_none_or(|line| position(line).0 < next));
    // Asked from there again: refused at once with the first retained index.
    let (ok, _, refused) = cli(&running[&2], &["log", "--follow", "--from", &next.to_string()]);
    assert!(!ok && refused.contains("is compacted; the first retained index is"), "{refused}");
    for vexevent in running.into_values() {
        assert!(vexevent.stop().exit_ok);
    }
}

/// A certificate authority of the test, and member certificates for 127.0.0.1 it signs (written
/// as `<name>.pem`, `<name>.key`, and the authority as `<ca_name>.pem`, under `dir`).
fn certificate_authority(dir: &Path, ca_name: &str, members: &[&str]) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.join(format!("{ca_name}.pem")), params.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    for name in members {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn three_members_over_mutual_tls_commit_every_event_once_and_a_foreign_certificate_is_refused_and_counted() {
    let Some(_serial) = exclusive_root_test(
        "three_members_over_mutual_tls_commit_every_event_once_and_a_foreign_certificate_is_refused_and_counted",
    ) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    // Made here, for this run: no private key is committed.
    certificate_authority(base.path(), "cluster-ca", &["n1", "n2", "n3"]);
    certificate_authority(base.path(), "foreign-ca", &["foreign"]);
    let tls = |name: &str, ca: &str| {
        let file = |suffix: &str| base.path().join(format!("{name}.{suffix}")).display().to_string();
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}",
            file("pem"),
            file("key"),
            base.path().join(format!("{ca}.pem")).display()
        )
    };
    let nodes = cluster_with(base.path(), &tls("n{id}", "cluster-ca"), |_, _, addr| addr);
    let running = start_cluster(&nodes);
    let never = AtomicBool::new(false);
    let mut performed: BTreeMap<u64, Performed> = BTreeMap::new();
    for node in &nodes {
        performed.insert(node.id, workload(&node.watch, "t", 100, &never));
    }
    let check_every_member = |performed: &BTreeMap<u64, Performed>| {
        for (id, vexevent) in &running {
            wait_until(&format!("node {id} to hold every node's writes"), || {
                let delivered = writes(&vexevent.events_so_far());
                performed.values().all(|files| reconcile(files, &delivered).1 == 0)
            });
            let delivered = writes(&vexevent.events_so_far());
            for (origin, files) in performed {
                assert_eq!(
                    reconcile(files, &delivered),
                    (files.len(), 0, 0),
                    "node {id}, writes of node {origin}: every one once"
                );
            }
        }
    };
    check_every_member(&performed);
    for vexevent in running.values() {
        assert_eq!(own_counter(vexevent, "cluster_peers_refused"), 0, "the members admit each other");
    }

    // A fourth instance whose certificate another CA signed, naming the three as its peers.
    let foreign_watch = base.path().join("watch-foreign");
    std::fs::create_dir_all(&foreign_watch).unwrap();
    let config = std::fs::read_to_string(&nodes[0].config).unwrap();
    let own_listen = format!("127.0.0.1:{}", free_port());
    let foreign_config = base.path().join("foreign.toml");
    let text = config
        .replace("id = \"n1\"", "id = \"intruder\"")
        .replace("node_id = 1", "node_id = 4")
        .replace(&tls("n1", "cluster-ca"), &tls("foreign", "foreign-ca"))
        .replace(
            &base.path().join("data1").display().to_string(),
            &base.path().join("data4").display().to_string(),
        );
    let listen_line = text.lines().find(|line| line.starts_with("listen = ")).unwrap().to_owned();
    let text = text.replace(&listen_line, &format!("listen = \"{own_listen}\""))
        + &format!("4 = \"{own_listen}\"\n");
    std::fs::write(&foreign_config, text).unwrap();
    let foreign = Vexevent::start(
        &[&foreign_watch],
        &["--config", foreign_config.to_str().unwrap(), "--control-addr", "127.0.0.1:0"],
    );
    for (id, vexevent) in &running {
        wait_until(&format!("member {id} to refuse the foreign certificate"), || {
            own_counter(vexevent, "cluster_peers_refused") > 0
        });
    }
    wait_until("the intruder to count the members' refusals", || {
        own_counter(&foreign, "cluster_peers_refused") > 0
    });
    std::fs::write(foreign_watch.join("intruder-write"), b"x").unwrap();
    // The members go on committing, and none of it reaches the intruder.
    for node in &nodes {
        performed.get_mut(&node.id).unwrap().extend(workload(&node.watch, "u", 50, &never));
    }
    check_every_member(&performed);
    let finished = foreign.stop();
    assert!(
        writes(&finished.events).iter().all(|(_, node, _)| node == "intruder"),
        "the intruder got none of the members' events"
    );
    for (id, vexevent) in running {
        let delivered = writes(&vexevent.events_so_far());
        assert!(
            delivered.iter().all(|(_, node, _)| node != "intruder"),
            "member {id} got the intruder's events"
        );
        let refused = own_counter(&vexevent, "cluster_peers_refused");
        eprintln!("TLS: member {id} refused the foreign certificate {refused} times");
        assert!(vexevent.stop().exit_ok);
    }
}

/// Bytes the file system of `dir` has free for an unprivileged writer.
fn free_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed plain-data struct it is given.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid struct to fill.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &raw mut stat) }, 0);
    stat.f_bavail * stat.f_frsize
}

/// Fills the file system of `dir` with `filler` until less than `keep` bytes are free.
fn fill(dir: &Path, filler: &Path, keep: u64) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(filler).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    while free_bytes(dir) >= keep {
        file.write_all(&chunk).unwrap();
        file.flush().unwrap();
    }
}

/// Reserve of free space the members keep in the disk-full test, and how full the disk is made.
const RESERVE: u64 = 4 << 20;

#[test]
fn a_member_whose_data_directory_fills_steps_back_counts_its_drops_loses_nothing_acknowledged_and_resumes() {
    let Some(_serial) = exclusive_root_test(
        "a_member_whose_data_directory_fills_steps_back_counts_its_drops_loses_nothing_acknowledged_and_resumes",
    ) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    // Each member's data directory is a small tmpfs of its own (a real file system that fills).
    let disks: Vec<Mount> = (1..=3).map(|_| Mount::tmpfs_of_size("24m")).collect();
    for (id, disk) in (1..=3).zip(&disks) {
        std::os::unix::fs::symlink(&disk.path, base.path().join(format!("data{id}"))).unwrap();
    }
    let extra = format!("min_free_bytes = {RESERVE}\nbuffer_events = 1000\nentry_events = 100");
    let nodes = cluster_with(base.path(), &extra, |_, _, addr| addr);
    let members: BTreeMap<u64, Member> = nodes
        .into_iter()
        .map(|node| {
            let running = Some(start(&node));
            (node.id, Member { node, running, earlier: Vec::new(), killed: false })
        })
        .collect();
    let full = agreed_leader(&members);
    let others: Vec<u64> = members.keys().copied().filter(|&id| id != full).collect();
    let mut performed = BTreeMap::new();
    let load = Load::start(&members, "d");
    let before = members[&others[0]].delivered().len();
    wait_until("the load to reach the cluster", || members[&others[0]].delivered().len() > before + 300);

    // The leader's disk fills (past its reserve, short of full).
    let disk = &disks[usize::try_from(full).unwrap() - 1].path;
    let filler = disk.join("filler");
    fill(disk, &filler, RESERVE / 2);
    let filled_at = Instant::now();
    let why = refusal(&members[&full]);
    assert!(why.contains("under cluster.min_free_bytes"), "{why}");
    assert_eq!(own_counter(members[&full].running(), "cluster_disk_low"), 1);
    // It stops leading; the others elect one of theirs and go on committing.
    wait_until("a leader that can write", || {
        others.iter().all(|id| leader_of(members[id].running()).is_some_and(|l| l != full))
    });
    let elected_in = filled_at.elapsed();
    let stranded = write_marker(&members[&full], "stranded", &mut performed);
    let accepted_in = marker_committed_in(&members[&others[0]], "while-full", &mut performed);
    for member in members.values() {
        assert!(!delivered_by(member, &stranded), "the full member proposed while under its reserve");
    }
    // It refuses the new leader's entries, and its own events wait in its bounded buffer until
    // it is full: then they are dropped and counted.
    wait_until("the full member to refuse entries and count its drops", || {
        let running = members[&full].running();
        own_counter(running, "cluster_writes_refused_disk") > 0
            && own_counter(running, "cluster_dropped_buffer_full") > 0
    });
    let dropped = own_counter(members[&full].running(), "cluster_dropped_buffer_full");
    assert!(free_bytes(disk) > 0, "the reserve kept the disk from filling");
    eprintln!(
        "disk of leader {full} filled: it says {why:?}; members {others:?} elected a leader after {elected_in:?} and committed a write in {accepted_in:?}; it dropped {dropped} of its events, counted"
    );

    // Space is freed: it takes part again, proposes what waited, catches up.
    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    wait_until("the member to take writes again", || {
        status(members[&full].running()).is_some_and(|s| s["writes_refused"].is_null())
    });
    wait_until("the write that waited to commit everywhere", || {
        members.values().all(|m| delivered_by(m, &stranded))
    });
    let resumed_in = freed_at.elapsed();
    let own_in = marker_committed_in(&members[&full], "after-free", &mut performed);
    eprintln!(
        "space freed: the waiting write committed on every member {resumed_in:?} later; a new one in {own_in:?}"
    );
    load.finish(&mut performed);
    converge_and_check(&members, &performed, "disk full");
    let running = members[&full].running();
    assert_eq!(own_counter(running, "cluster_disk_low"), 0);
    assert_eq!(own_counter(running, "cluster_log_failed"), 0, "the log never ran into the full disk");
    for member in members.into_values() {
        let finished = member.running.unwrap().stop();
        assert!(finished.exit_ok, "{:?}", finished.stderr);
    }
}

/// Writes `count` files in `dir` whose names share nothing with the previous one (the log
/// encodes a path as what it shares with the previous path plus the rest): about 230 bytes an
/// event in the log, so that a few thousand fill a 1 MiB snapshot interval.
fn wide_workload(dir: &Path, prefix: &str, count: usize) -> Performed {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..count)
        .map(|k| {
            let noise = (0..13).fold(String::new(), |mut noise, _| {
                let _ = write!(noise, "{:016x}", next_random(&mut state));
                noise
            });
            let path = dir.join(format!("{}{prefix}{k}", &noise[..200]));
            std::fs::write(&path, b"replicate").unwrap();
            path
        })
        .collect()
}

/// A member that joins a running cluster: `join = true`, no peers, the cluster's secret.
fn joining_node(base: &Path, id: u64, extra: &str) -> (Node, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let watch = base.join(format!("watch{id}"));
    std::fs::create_dir_all(&watch).unwrap();
    let config = base.join(format!("node{id}.toml"));
    let text = format!(
        "[node]\nid = \"n{id}\"\n[capture]\nops = [\"write\"]\n[cluster]\nnode_id = {id}\njoin = true\n\
         listen = \"{listen}\"\ndata_dir = \"{data}\"\nsecret_file = \"{secret}\"\n\
         heartbeat_ms = 100\nelection_timeout_ms = [500, 1000]\n{extra}\n",
        data = base.join(format!("data{id}")).display(),
        secret = base.join("secret").display(),
    );
    std::fs::write(&config, text).unwrap();
    (Node { id, watch, config }, listen)
}

/// The ids and roles of the members `member` shows.
fn membership_of(member: &Vexevent) -> Option<Vec<(u64, bool)>> {
    let status = status(member)?;
    Some(
        status["members"]
            .as_array()?
            .iter()
            .filter_map(|m| Some((m["id"].as_u64()?, m["voter"].as_bool()?)))
            .collect(),
    )
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario in its order: compact, add, reconcile, remove, restart"
)]
fn a_member_added_after_compaction_catches_up_by_snapshot_and_a_removed_one_stops_taking_part() {
    let Some(_serial) = exclusive_root_test(
        "a_member_added_after_compaction_catches_up_by_snapshot_and_a_removed_one_stops_taking_part",
    ) else {
        return;
    };
    let base = tempfile::tempdir().unwrap();
    // Snapshots every MiB of events, 8 entries kept behind one: the log a new member needs is
    // soon compacted away.
    let extra = "snapshot_bytes = 1048576\nkeep_entries = 8";
    let nodes = cluster_with(base.path(), extra, |_, _, addr| addr);
    let mut members: BTreeMap<u64, Member> = nodes
        .into_iter()
        .map(|node| {
            let running = Some(start(&node));
            (node.id, Member { node, running, earlier: Vec::new(), killed: false })
        })
        .collect();
    let leader = agreed_leader(&members);

    // Phase 1: enough events for a snapshot on every member, and the log behind it purged.
    let mut performed: BTreeMap<u64, Performed> = BTreeMap::new();
    let writers: Vec<_> = members
        .values()
        .map(|m| {
            let (id, dir) = (m.node.id, m.node.watch.clone());
            (id, std::thread::spawn(move || wide_workload(&dir, "w", 2_000)))
        })
        .collect();
    for (id, writer) in writers {
        performed.insert(id, writer.join().unwrap());
    }
    let compacted = wait_for_value(|| {
        let status = status(members[&leader].running())?;
        let first = status["first_index"].as_u64()?;
        (status["snapshot_index"].as_u64().is_some() && first > 1).then_some(first)
    });
    eprintln!("membership: the leader's log is compacted up to index {compacted}");

    // Phase 2: under load on the three members, a fourth is added through a follower.
    let load = Load::start(&members, "b");
    let (joining, addr) = joining_node(base.path(), 4, extra);
    let fourth = start(&joining);
    let waiting = status(&fourth).unwrap();
    assert!(
        waiting["writes_refused"].as_str().is_some_and(|why| why.contains("in no cluster yet")),
        "{waiting}"
    );
    let follower = members.keys().copied().find(|&id| id != leader).unwrap();
    let asked = members[&follower].running();
    let (ok, _, refused) = cli(asked, &["cluster", "add", "5", &format!("127.0.0.1:{}", free_port())]);
    assert!(!ok && refused.contains("does not answer as a cluster member"), "{refused}");
    let (ok, _, refused) = cli(asked, &["cluster", "add", "5", &addr.to_string()]);
    assert!(!ok && refused.contains("is member 4, not 5"), "{refused}");
    let added_at = Instant::now();
    let (ok, said, stderr) = cli(asked, &["cluster", "add", "4", &addr.to_string()]);
    assert!(ok, "{stderr}");
    let add_took = added_at.elapsed();
    assert!(said.contains("member 4") && said.contains("voters: 1, 2, 3, 4"), "{said}");
    let marker = members[&1].node.watch.join("after-add");
    std::fs::write(&marker, b"marker").unwrap();
    performed.get_mut(&1).unwrap().push(marker.clone());
    let needle = format!("\"path\":\"{}\"", marker.display());
    wait_until("the fourth member to deliver a write made after it was added", || {
        std::fs::read_to_string(&fourth.output).unwrap_or_default().contains(&needle)
    });
    let caught_up = added_at.elapsed();
    let skipped = own_counter(&fourth, "cluster_snapshot_skipped");
    let snapshot_bytes = std::fs::metadata(base.path().join("data4/snapshot.bin")).unwrap().len();
    eprintln!(
        "membership: member 4 added in {add_took:?} (learner, caught up, voter), delivered a new write {caught_up:?} after the add began; it installed a snapshot of {snapshot_bytes} bytes standing for {skipped} events"
    );
    assert!(skipped > 0, "the fourth member caught up through a snapshot (the log it needed was compacted)");
    // The cluster totals follow the membership: the new member's counters reach the others.
    wait_until("member 1's cluster totals to hold member 4's counters", || {
        cluster_total(members[&1].running(), "cluster_snapshot_skipped") == skipped
    });
    for member in members.values() {
        wait_until("every member to show four voters", || {
            membership_of(member.running()).is_some_and(|m| m == [(1, true), (2, true), (3, true), (4, true)])
        });
    }
    let (ok, table, _) = cli(members[&1].running(), &["cluster", "status"]);
    assert!(
        ok && table.contains("role") && table.lines().filter(|l| l.contains(" voter ")).count() == 4,
        "{table}"
    );
    // The fourth member writes too: its events commit and reach the others.
    let fourth_member = Member { node: joining, running: Some(fourth), earlier: Vec::new(), killed: false };
    let took = marker_committed_in(&fourth_member, "from-4", &mut performed);
    eprintln!("membership: a write on member 4 committed in {took:?}");
    load.finish(&mut performed);

    // Its output is the others' from the snapshot on: the same writes in the same (commit) order,
    // and what it skipped is what the snapshot stood for.
    let reference_output = members[&1].running.as_ref().unwrap().output.clone();
    let all_events = |path: &Path| read_events(path);
    let mut fourth_events = Vec::new();
    wait_until("the fourth member to hold every committed event after its snapshot", || {
        let reference = all_events(&reference_output);
        fourth_events = all_events(&fourth_member.running().output);
        let ids = |events: &[Value]| -> Vec<String> {
            events.iter().filter_map(|e| e["origin"]["id"].as_str().map(str::to_owned)).collect()
        };
        let (reference, fourth) = (ids(&reference), ids(&fourth_events));
        let Some(start) = fourth.first().and_then(|first| reference.iter().position(|id| id == first)) else {
            return false;
        };
        if reference[start..] != fourth[..] {
            return false;
        }
        assert_eq!(
            start as u64, skipped,
            "the events before the fourth member's first are the ones its snapshot stood for"
        );
        true
    });
    let fourth_writes = writes(&fourth_events);
    for (origin, files) in &performed {
        let (_, _, repeats) = reconcile(files, &fourth_writes);
        assert_eq!(repeats, 0, "member 4 delivers node {origin}'s writes at most once");
    }

    // Phase 3: a follower (neither the leader nor the one asked) is removed, asked of member 4.
    let removed = members.keys().copied().find(|&id| id != leader && id != follower).unwrap();
    let (ok, said, stderr) = cli(fourth_member.running(), &["cluster", "remove", &removed.to_string()]);
    assert!(ok, "{stderr}");
    assert!(said.contains(&format!("member {removed} removed")), "{said}");
    let (ok, _, refused) = cli(fourth_member.running(), &["cluster", "remove", &removed.to_string()]);
    assert!(!ok && refused.contains(&format!("no member {removed} in the cluster")), "{refused}");
    let gone = members.remove(&removed).unwrap();
    let why = refusal(&gone);
    assert!(why.contains("removed"), "{why}");
    members.insert(4, fourth_member);
    let expected: Vec<(u64, bool)> = members.keys().map(|&id| (id, true)).collect();
    for member in members.values() {
        wait_until("every member to show three voters", || {
            membership_of(member.running()).is_some_and(|m| m == expected)
        });
    }
    // The others go on committing; the removed member's new writes are taken by nobody, and it
    // gets nothing more.
    let stray = write_marker(&gone, "after-removal", &mut BTreeMap::new());
    let took = marker_committed_in(&members[&leader], "after-removal-on-the-leader", &mut performed);
    eprintln!("membership: member {removed} removed; a write on the leader committed in {took:?}");
    let late = members[&leader].node.watch.join("after-removal-on-the-leader");
    for member in members.values() {
        wait_until("the remaining members to deliver the write", || delivered_by(member, &late));
        assert!(!delivered_by(member, &stray), "a removed member's write is not committed");
    }
    assert!(!delivered_by(&gone, &late), "the removed member gets nothing more");
    wait_until("the removed member's proposals and counters to be refused, and counted", || {
        members.values().map(|m| own_counter(m.running(), "cluster_not_member_refused")).sum::<u64>() > 0
    });
    let removed_stats = gone.running.unwrap().stop();
    assert!(removed_stats.exit_ok, "{:?}", removed_stats.stderr);
    // It does not start again as a member with its data.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_vexevent"))
        .args(["run", "--config", gone.node.config.to_str().unwrap(), "--watch"])
        .arg(&gone.node.watch)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("this member was removed"), "{stderr}");

    // Phase 4: the added member restarts with its data (its configuration names no peers): it
    // comes back with the membership its log holds, and commits.
    let fourth_member = members.get_mut(&4).unwrap();
    let finished = fourth_member.running.take().unwrap().stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    fourth_member.restart();
    wait_until("the restarted member to rejoin", || {
        membership_of(fourth_member.running()).is_some_and(|m| m == expected)
            && leader_of(fourth_member.running()).is_some()
    });
    let took = marker_committed_in(&members[&4], "after-restart", &mut performed);
    eprintln!("membership: member 4 restarted; a write on it committed in {took:?}");
    for member in members.values() {
        wait_until("every member to deliver it", || {
            delivered_by(member, &members[&4].node.watch.join("after-restart"))
        });
    }
    // The members that never left hold every write of the members that stayed once, or lost
    // (the stats file that reports losses is written periodically: polled).
    for id in members.keys().copied().filter(|&id| id != 4) {
        for origin in members.keys() {
            let files = &performed[origin];
            wait_until(&format!("member {id} to hold n{origin}'s writes or report them lost"), || {
                let (_, missing, _) = reconcile(files, &members[&id].delivered());
                missing as u64 <= reported_lost(members[origin].running())
            });
            let (once, missing, repeats) = reconcile(files, &members[&id].delivered());
            let lost = reported_lost(members[origin].running());
            eprintln!(
                "membership: member {id}: writes of n{origin}: performed {}, delivered {once}, missing {missing}, reported lost {lost}",
                files.len()
            );
            assert_eq!(repeats, 0, "member {id}: repeats of n{origin}'s writes");
        }
    }
    for member in members.into_values() {
        let finished = member.running.unwrap().stop();
        assert!(finished.exit_ok, "{:?}", finished.stderr);
    }
}
