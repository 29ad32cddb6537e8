//! Replication throughput and commit latency: three cluster members in this process, on
//! loopback TCP, each with its own log directory (strong mode: every append fsync'd before it is
//! acknowledged), fed directly through their `replicate` stages (no capture). Each member offers
//! write events of its own node (the shape `translate` makes of a `write(2)`: path, process,
//! result, bytes); an event's commit latency is the time from its offer to its delivery by its
//! own member's stage (committed by a majority, applied, handed on in commit order).
//! Two runs: saturated (as fast as the members take them, 1,000,000 events) and paced
//! (100,000 events/s for 5 s). Prints events/s, latency p50/p99, bytes per event in the log
//! and events per entry (the events in the log's binary encoding).
//!
//! Then, with capture running (root; skipped with the reason otherwise): three `vexevent run`
//! processes form a cluster on loopback, each capturing `write(2)`s a workload thread makes in
//! its watched directory (64-byte writes to one file), every committed event delivered to a
//! discarding output. Paced (100,000 writes/s over the three for `CAPTURE_SECS`): the
//! kernel-to-sink latency of the committed events on member 1 (captured, proposed, committed by
//! a majority, applied, delivered), p50/p99. Saturated (the writers as fast as they go): events
//! committed per second, from the first write to the last commit. Run: `cargo bench --bench replication`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use vexevent::{
    event::{EventType, FilesystemContext, NodeId, OpResult, PathBytes, ProcessInfo, Run, SemanticEvent},
    pipeline::{EventBatch, Stage},
    replicate::{ClusterConfig, Consistency, ReplicateStage},
    telemetry::Counters,
};

/// Members.
const NODES: usize = 3;
/// Events offered per stage call (a capture batch).
const OFFER: usize = 512;
/// Events a member may have offered and not yet seen delivered (below `buffer_events`).
const OUTSTANDING: u64 = 60_000;

struct Member {
    stage: Box<ReplicateStage>,
    run: Run,
    counters: Arc<Counters>,
    /// Offer time of each of this member's events, by sequence number.
    offered_at: Vec<Instant>,
    delivered_own: u64,
    delivered_all: u64,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}

fn start(base: &Path) -> Vec<Member> {
    let secret = base.join("secret");
    std::fs::write(&secret, "benchmark secret, 32 bytes long.").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let peers: BTreeMap<String, std::net::SocketAddr> = (0..NODES)
        .map(|i| ((i + 1).to_string(), format!("127.0.0.1:{}", ports[i]).parse().expect("addr")))
        .collect();
    (0..NODES)
        .map(|i| {
            let config = ClusterConfig {
                node_id: i as u64 + 1,
                listen: peers[&(i + 1).to_string()],
                peers: peers.clone(),
                join: false,
                data_dir: base.join(format!("node{}", i + 1)),
                consistency: Consistency::Strong,
                secret_file: secret.clone(),
                buffer_events: 100_000,
                entry_events: 8_192,
                snapshot_bytes: 64 << 20,
                keep_entries: 1_024,
                heartbeat_ms: 50,
                election_timeout_ms: [300, 600],
                causal_delay_ms: 100,
                tls: None,
                plaintext_off_loopback: false,
                min_free_bytes: 1 << 20,
            };
            let settings = config.settings().expect("valid cluster settings");
            let run = Run::new(NodeId::new(&format!("bench{}", i + 1)).expect("node id"));
            let counters = Arc::new(Counters::default());
            let stage = Box::new(ReplicateStage::start(&settings, &run, &counters).expect("member starts"));
            Member { stage, run, counters, offered_at: Vec::new(), delivered_own: 0, delivered_all: 0 }
        })
        .collect()
}

/// A write event of `member`'s node, sequence `sequence`.
fn event(run: &Run, sequence: u64) -> SemanticEvent {
    let mut event =
        SemanticEvent::own(run, EventType::FilesystemWrite, "write".into(), sequence * 1_000, sequence);
    event.origin = run.origin(u32::try_from(sequence % 2).unwrap_or(0), sequence);
    event.local_sequence = sequence;
    event.context.filesystem = Some(FilesystemContext {
        path: Some(PathBytes::from(
            format!("/srv/data/shard-{:02}/object-{sequence:08}.bin", sequence % 16).as_str(),
        )),
        bytes: Some(4096),
        ..FilesystemContext::default()
    });
    event.process = Some(ProcessInfo {
        pid: 4242,
        tid: 4243,
        uid: 1000,
        gid: 1000,
        comm: PathBytes::from("writer"),
        cgroup_id: 0,
    });
    event.result = Some(OpResult { ok: true, ret: 4096, error: None });
    event.duration_ns = 2_500;
    event
}

/// Takes what `member`'s stage delivers; records the latency of its own events.
fn collect(member: &mut Member, batch: &mut EventBatch, latency: &mut Histogram<u64>) {
    let now = Instant::now();
    for delivered in &batch.events {
        member.delivered_all += 1;
        if delivered.origin.run == member.run {
            member.delivered_own += 1;
            if let Some(at) =
                member.offered_at.get(usize::try_from(delivered.origin.sequence).unwrap_or(usize::MAX))
            {
                let micros = u64::try_from(now.duration_since(*at).as_micros()).unwrap_or(u64::MAX);
                let _ = latency.record(micros.max(1));
            }
        }
    }
    batch.clear();
}

/// Offers `total` events spread over the members at `rate` events/s (`None`: as fast as they
/// take them), until every member delivered every event. Returns the elapsed time.
fn drive(members: &mut [Member], total: u64, rate: Option<f64>, latency: &mut Histogram<u64>) -> Duration {
    let per_member = total / members.len() as u64;
    let started = Instant::now();
    let target = per_member * members.len() as u64;
    let base: Vec<u64> = members.iter().map(|m| m.offered_at.len() as u64).collect();
    let all_before: Vec<u64> = members.iter().map(|m| m.delivered_all).collect();
    let mut batch = EventBatch::default();
    loop {
        let mut offered_any = false;
        for (index, member) in members.iter_mut().enumerate() {
            let offered = member.offered_at.len() as u64 - base[index];
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "a pace in events"
            )]
            let allowed = rate.map_or(per_member, |rate| {
                ((started.elapsed().as_secs_f64() * rate / NODES as f64) as u64).min(per_member)
            });
            let own_outstanding = member.offered_at.len() as u64 - member.delivered_own;
            if offered < allowed && own_outstanding < OUTSTANDING {
                let count = (allowed - offered).min(OFFER as u64);
                let first = member.offered_at.len() as u64;
                let now = Instant::now();
                batch.events.extend((first..first + count).map(|sequence| event(&member.run, sequence)));
                member.offered_at.extend(std::iter::repeat_n(now, usize::try_from(count).unwrap_or(0)));
                member.stage.process(&mut batch);
                offered_any = true;
            } else {
                member.stage.tick(0, &mut batch);
            }
            collect(member, &mut batch, latency);
        }
        let done = members.iter().zip(&all_before).all(|(m, before)| m.delivered_all - before >= target);
        if done {
            return started.elapsed();
        }
        if !offered_any {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("log"))
        .map_or(0, |entries| entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
}

#[expect(clippy::cast_precision_loss, reason = "figures for display")]
fn report(name: &str, events: u64, elapsed: Duration, latency: &Histogram<u64>) {
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "{name}: {events} events committed in {:.2} s = {:.0} events/s; commit latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        elapsed.as_secs_f64(),
        rate,
        latency.value_at_quantile(0.50) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.max() as f64 / 1000.0,
    );
}

fn main() {
    let base = tempfile::tempdir().expect("temp dir");
    let mut members = start(base.path());
    // Warm up: the cluster forms and commits a first batch on every member.
    let mut warm = Histogram::<u64>::new(3).expect("histogram");
    drive(&mut members, 3_000, None, &mut warm);

    let mut saturated = Histogram::<u64>::new(3).expect("histogram");
    let elapsed = drive(&mut members, 1_000_000, None, &mut saturated);
    report("saturated", 999_999, elapsed, &saturated);

    let mut paced = Histogram::<u64>::new(3).expect("histogram");
    let elapsed = drive(&mut members, 500_000, Some(100_000.0), &mut paced);
    report("paced 100k/s", 500_000, elapsed, &paced);

    let committed = members[0].counters.cluster_events_committed.load(Ordering::Relaxed);
    let entries = members[0].counters.cluster_applied_index.load(Ordering::Relaxed).max(1);
    let dropped: u64 = members
        .iter()
        .map(|m| {
            m.counters.cluster_dropped_buffer_full.load(Ordering::Relaxed)
                + m.counters.cluster_repeats_dropped.load(Ordering::Relaxed)
        })
        .sum();
    let bytes = log_bytes(&base.path().join("node1"));
    #[expect(clippy::cast_precision_loss, reason = "ratios for display")]
    let (per_event, per_entry) = (bytes as f64 / committed.max(1) as f64, committed as f64 / entries as f64);
    println!(
        "log: {committed} events in {entries} entries ({per_entry:.0} events per entry), {bytes} bytes on node 1 ({per_event:.0} bytes per event, binary encoding in postcard records); drops and repeats: {dropped}"
    );
    capture_rounds();
    let mut batch = EventBatch::default();
    for mut member in members {
        member.stage.flush(&mut batch);
        batch.clear();
        member.stage.finish();
    }
}

/// How long each workload of the rounds with capture writes.
const CAPTURE_SECS: u64 = 5;

/// Three `vexevent run` members under `base`, each watching its own directory.
fn start_processes(base: &Path) -> Vec<(support::Vexevent, std::path::PathBuf)> {
    let secret = base.join("secret");
    std::fs::write(&secret, "benchmark secret, 32 bytes long.").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let listen: Vec<String> = (0..NODES).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let peers = listen.iter().enumerate().fold(String::new(), |mut peers, (i, addr)| {
        let _ = writeln!(peers, "{} = \"{addr}\"", i + 1);
        peers
    });
    (1..=NODES)
        .map(|id| {
            let watch = base.join(format!("watch{id}"));
            std::fs::create_dir_all(&watch).expect("watch dir");
            let config = base.join(format!("node{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[node]\nid = \"capture{id}\"\n[capture]\nops = [\"write\"]\n[cluster]\nnode_id = {id}\n\
                     listen = \"{}\"\ndata_dir = \"{}\"\nsecret_file = \"{}\"\n[cluster.peers]\n{peers}",
                    listen[id - 1],
                    base.join(format!("data{id}")).display(),
                    secret.display()
                ),
            )
            .expect("config");
            let vexevent = support::Vexevent::start_with_own_sinks(
                &[&watch],
                &[
                    "--config",
                    config.to_str().expect("utf-8"),
                    "--control-addr",
                    "127.0.0.1:0",
                    "--output",
                    "/dev/null",
                ],
            );
            (vexevent, watch)
        })
        .collect()
}

/// `member`'s stats, from its control API.
fn live_stats(member: &support::Vexevent) -> Option<serde_json::Value> {
    let addr = member.served_address("http://");
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(3))).build().into();
    let mut response = agent
        .get(format!("http://{addr}/api/v1/control/stats"))
        .header("authorization", format!("Bearer {}", member.token()))
        .call()
        .ok()?;
    serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
}

fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats["userspace"][name].as_u64().unwrap_or(0)
}

/// Writes 64 bytes at a time to one file in `dir` for `CAPTURE_SECS`, at `rate` writes/s
/// (`None`: as fast as it goes). Returns the writes made.
fn write_load(dir: &Path, rate: Option<u64>) -> u64 {
    use std::io::Write as _;
    let mut file = std::fs::File::create(dir.join("load")).expect("load file");
    let block = [0x5au8; 64];
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < Duration::from_secs(CAPTURE_SECS) {
        let due = rate.map_or(written + 256, |rate| {
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX) * rate / 1_000_000
        });
        if written < due {
            let end = due.min(written + 256);
            while written < end {
                file.write_all(&block).expect("write");
                written += 1;
            }
        } else {
            // Pacing the load generator.
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    written
}

/// One round with capture: the members start, form, take the load; member 1's figures.
fn capture_round(name: &str, rate: Option<u64>) {
    let base = tempfile::tempdir().expect("temp dir");
    let members = start_processes(base.path());
    let committed = |member: &support::Vexevent| {
        live_stats(member).map_or(0, |s| counter(&s, "cluster_events_committed"))
    };
    // Formed once a first write of each member is committed on member 1.
    for (_, watch) in &members {
        std::fs::write(watch.join("warm-up"), b"x").expect("warm-up write");
    }
    let formed = Instant::now();
    while committed(&members[0].0) < NODES as u64 {
        assert!(formed.elapsed() < Duration::from_mins(2), "the cluster did not form");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = committed(&members[0].0);
    let started = Instant::now();
    let loads: Vec<_> = members
        .iter()
        .map(|(_, watch)| {
            let watch = watch.clone();
            std::thread::spawn(move || write_load(&watch, rate.map(|rate| rate / NODES as u64)))
        })
        .collect();
    let performed: u64 = loads.into_iter().map(|load| load.join().expect("load thread")).sum();
    // Drained once member 1's commit count has not grown for a second.
    let (mut last, mut last_growth) = (committed(&members[0].0), Instant::now());
    while last_growth.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
        let now = committed(&members[0].0);
        if now > last {
            (last, last_growth) = (now, Instant::now());
        }
    }
    let events = last - before;
    let elapsed = last_growth.duration_since(started);
    let bytes = log_bytes(&base.path().join("data1"));
    let finished: Vec<support::Finished> = members.into_iter().map(|(member, _)| member.stop()).collect();
    let stats = &finished[0].stats;
    let reported_lost: u64 = finished
        .iter()
        .map(|f| {
            counter(&f.stats, "lost_reported")
                + counter(&f.stats, "cluster_dropped_buffer_full")
                + counter(&f.stats, "cluster_dropped_shutdown")
        })
        .sum();
    let latency = &stats["latency"];
    #[expect(clippy::cast_precision_loss, reason = "figures for display")]
    let (per_second, per_event) = (events as f64 / elapsed.as_secs_f64(), bytes as f64 / last.max(1) as f64);
    println!(
        "{name}: {performed} writes performed, {events} events committed in {:.2} s = {per_second:.0} events/s; \
         kernel-to-sink latency on member 1 p50 {:.2} ms, p99 {:.2} ms ({} events); reported lost {reported_lost}; \
         log of member 1: {bytes} bytes, {per_event:.0} bytes per event",
        elapsed.as_secs_f64(),
        latency["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
        latency["p99_us"].as_f64().unwrap_or(0.0) / 1000.0,
        latency["events"].as_u64().unwrap_or(0),
    );
}

/// The rounds with capture running (root).
fn capture_rounds() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("with capture: SKIP (loading the eBPF programs needs root)");
        return;
    }
    capture_round("with capture, paced 100k/s", Some(100_000));
    capture_round("with capture, saturated", None);
}
