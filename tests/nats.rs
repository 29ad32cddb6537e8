//! The NATS `JetStream` sink against a real `nats-server -js` started by each test (the Debian
//! package `nats-server`, installed by scripts/setup.sh; a missing binary fails the test): every
//! event is stored once with its origin id as `Nats-Msg-Id`, a repeated event is stored once, a
//! server that is down at start gets every event once it comes up (or the drops are counted),
//! and, as root, the events of real file operations captured by `vexevent run` reach the stream
//! exactly as they reach a file sink.

mod support;

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde_json::Value;
use support::{Mount, Vexevent, read_events, root_or_skip};
use vexevent::{
    pipeline::WhenFull,
    sinks::{Delivery, Destination, NatsAuth, NatsSettings, Queued, SinkSpec, Sinks},
    telemetry::Counters,
};

/// How long the server may take to accept connections and serve `JetStream`.
const SERVER_DEADLINE: Duration = Duration::from_secs(20);

/// The stream every test publishes to, and its subjects.
const STREAM: &str = "VEXEVENT";
const SUBJECTS: &str = "vexevent.>";

/// A `nats-server -js` on 127.0.0.1, killed (by its pid) on drop.
struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server on `port` with `JetStream` storing in a fresh directory, and waits until
    /// the stream exists.
    fn start_on(port: u16) -> Self {
        let store = tempfile::tempdir().unwrap();
        let child = Command::new(nats_server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start nats-server: {error}"));
        let server = Self { child, port, _store: store };
        let deadline = Instant::now() + SERVER_DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        runtime().block_on(async {
            let jetstream = jetstream::new(async_nats::connect(server.url()).await.unwrap());
            let config = stream::Config {
                name: STREAM.into(),
                subjects: vec![SUBJECTS.into()],
                duplicate_window: Duration::from_mins(2),
                ..stream::Config::default()
            };
            // JetStream may answer a moment after the port opens.
            while let Err(error) = jetstream.get_or_create_stream(config.clone()).await {
                assert!(Instant::now() < deadline, "JetStream did not come up: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        server
    }

    fn start() -> Self {
        Self::start_on(free_port())
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Every message of the stream, in stream order.
    fn messages(&self) -> Vec<Stored> {
        runtime().block_on(async {
            let jetstream = jetstream::new(async_nats::connect(self.url()).await.unwrap());
            let stream = jetstream.get_stream(STREAM).await.unwrap();
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    ack_policy: consumer::AckPolicy::None,
                    ..consumer::pull::Config::default()
                })
                .await
                .unwrap();
            let mut stored = Vec::new();
            loop {
                let mut batch = consumer.fetch().max_messages(1000).messages().await.unwrap();
                let before = stored.len();
                while let Some(message) = batch.next().await {
                    let message = message.unwrap();
                    stored.push(Stored {
                        sequence: message.info().unwrap().stream_sequence,
                        subject: message.subject.to_string(),
                        msg_id: message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("Nats-Msg-Id"))
                            .map(ToString::to_string),
                        event: serde_json::from_slice(&message.payload).unwrap(),
                    });
                }
                if stored.len() == before {
                    return stored;
                }
            }
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One stored message.
struct Stored {
    sequence: u64,
    subject: String,
    msg_id: Option<String>,
    event: Value,
}

/// The `nats-server` binary: on the `PATH`, or in /usr/sbin where Debian puts it (not on a user's
/// `PATH`). Missing, the test fails: scripts/setup.sh installs it.
fn nats_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nats-server"))
        .find(|binary| binary.is_file())
        .unwrap_or_else(|| {
            panic!("nats-server is not installed; run scripts/setup.sh (Debian package nats-server)")
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn settings(url: &str) -> NatsSettings {
    NatsSettings {
        servers: url.parse().unwrap(),
        subject: "vexevent.{type}".parse().unwrap(),
        auth: NatsAuth::None,
        connect_timeout: Duration::from_secs(2),
        ack_timeout: Duration::from_secs(5),
    }
}

fn spec(url: &str, queue: usize, when_full: WhenFull) -> SinkSpec {
    SinkSpec {
        name: "js".into(),
        destination: Destination::Nats(settings(url)),
        queue,
        when_full,
        delivery: Delivery {
            batch_events: 512,
            linger: Duration::ZERO,
            retry_initial: Duration::from_millis(5),
            retry_max: Duration::from_millis(100),
            max_retries: 0,
        },
    }
}

/// An event line as the pipeline writes it: the fields the sink reads, a number, and a context
/// the size of a typical event's.
fn event(n: u64) -> Queued {
    let line = format!(
        r#"{{"event_id":{n},"origin":{{"node":"t","run":"00000000000000aa","part":0,"id":"t:00000000000000aa:0:{n}:0"}},"event_type":"FilesystemWrite","n":{n},"context":{{"filesystem":{{"path":"/srv/data/{n:0>200}"}}}},"process":{{"pid":7661,"tid":7661,"uid":0,"gid":0,"comm":"bash"}},"result":{{"ok":true,"ret":4}},"duration_ns":36685}}"#
    );
    Queued { line: line.into(), urgent: false, sequence: n, monotonic_ns: 0 }
}

/// Publishes events `range` through a fresh sink; its counters.
fn publish(url: &str, range: std::ops::Range<u64>, queue: usize, when_full: WhenFull) -> Arc<Counters> {
    let counters = Arc::new(Counters::default());
    let sinks = Sinks::start(&[spec(url, queue, when_full)], &counters).unwrap();
    for n in range {
        sinks.offer(0, [event(n)], &counters);
    }
    sinks.finish();
    counters
}

/// The numbers of the stored events, in stream order.
fn numbers(stored: &[Stored]) -> Vec<u64> {
    stored.iter().map(|s| s.event["n"].as_u64().unwrap()).collect()
}

/// The numbers of the stored events, sorted: after a failed delivery, messages of the failed
/// attempt that `JetStream` stored come before the retried ones it had not.
fn sorted_numbers(stored: &[Stored]) -> Vec<u64> {
    let mut numbers = numbers(stored);
    numbers.sort_unstable();
    numbers
}

#[test]
fn every_event_is_stored_once_with_its_origin_id_as_msg_id() {
    const EVENTS: u32 = 20_000;
    let server = NatsServer::start();
    let started = Instant::now();
    let counters = publish(&server.url(), 0..u64::from(EVENTS), 10_000, WhenFull::Block);
    let elapsed = started.elapsed();
    eprintln!(
        "nats sink: {EVENTS} events of {} bytes acknowledged by JetStream in {elapsed:?} ({:.0} events/s, loopback, this build)",
        event(0).line.len(),
        f64::from(EVENTS) / elapsed.as_secs_f64()
    );
    let stored = server.messages();
    let events = u64::from(EVENTS);
    assert_eq!(numbers(&stored), (0..events).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(stored.iter().map(|s| s.sequence).collect::<Vec<_>>(), (1..=events).collect::<Vec<_>>());
    for s in &stored {
        assert_eq!(s.subject, "vexevent.FilesystemWrite");
        assert_eq!(s.msg_id.as_deref(), s.event["origin"]["id"].as_str(), "Nats-Msg-Id is the origin id");
    }
    let summary = &counters.outputs.sinks()["js"];
    assert_eq!(summary.delivered, events);
    assert_eq!(summary.failed_attempts, 0);
    assert_eq!(counters.sink_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn a_repeated_event_is_stored_once() {
    let server = NatsServer::start();
    // The same event twice in one batch, then the whole run again (a sink restarted after a
    // delivery whose acknowledgement it never saw sends the same origin ids again).
    let counters = Arc::new(Counters::default());
    let sinks = Sinks::start(&[spec(&server.url(), 100, WhenFull::Block)], &counters).unwrap();
    sinks.offer(0, [event(0), event(0), event(1)], &counters);
    sinks.finish();
    assert_eq!(counters.outputs.sinks()["js"].delivered, 3, "a repeat is acknowledged too");
    let again = publish(&server.url(), 0..2, 100, WhenFull::Block);
    assert_eq!(again.outputs.sinks()["js"].delivered, 2);
    assert_eq!(numbers(&server.messages()), [0, 1], "JetStream kept one copy of each");

    // A line that is not an event has no origin: it is published without a Msg-Id, so each copy
    // is stored.
    let counters = Arc::new(Counters::default());
    let sinks = Sinks::start(&[spec(&server.url(), 100, WhenFull::Block)], &counters).unwrap();
    let plain = Queued { line: r#"{"n":7}"#.into(), urgent: false, sequence: 0, monotonic_ns: 0 };
    sinks.offer(0, [plain.clone(), plain], &counters);
    sinks.finish();
    let stored = server.messages();
    assert_eq!(numbers(&stored), [0, 1, 7, 7]);
    assert!(stored[2..].iter().all(|s| s.msg_id.is_none() && s.subject == "vexevent.Unknown"));
}

/// A sink to a port no server listens on yet, offered `events` events: the port, the counters
/// and the running sink.
fn sink_to_a_down_server(events: u64, queue: usize, when_full: WhenFull) -> (u16, Arc<Counters>, Sinks) {
    let port = free_port();
    let counters = Arc::new(Counters::default());
    let sinks =
        Sinks::start(&[spec(&format!("nats://127.0.0.1:{port}"), queue, when_full)], &counters).unwrap();
    for n in 0..events {
        sinks.offer(0, [event(n)], &counters);
    }
    (port, counters, sinks)
}

#[test]
fn a_server_down_at_start_gets_every_event_once_it_comes_up() {
    const EVENTS: u64 = 300;
    let (port, counters, sinks) = sink_to_a_down_server(EVENTS, 1000, WhenFull::Block);
    let deadline = Instant::now() + SERVER_DEADLINE;
    while sinks.is_up(0) {
        assert!(Instant::now() < deadline, "the sink never noticed the server is down");
        std::thread::sleep(Duration::from_millis(5));
    }
    let server = NatsServer::start_on(port);
    sinks.finish();
    let summary = &counters.outputs.sinks()["js"];
    assert_eq!(summary.delivered, EVENTS, "{summary:?}");
    assert!(summary.failed_attempts > 0);
    assert_eq!(counters.sink_errors.load(Ordering::Relaxed), 0);
    let stored = server.messages();
    assert_eq!(sorted_numbers(&stored), (0..EVENTS).collect::<Vec<_>>(), "every event once");
    assert_eq!(stored.last().map(|s| s.sequence), Some(EVENTS), "no message stored twice");
}

#[test]
fn a_dropping_sink_counts_what_it_dropped_while_the_server_was_down() {
    const EVENTS: u64 = 200;
    let (port, counters, sinks) = sink_to_a_down_server(EVENTS, 8, WhenFull::DropNewest);
    let server = NatsServer::start_on(port);
    sinks.finish();
    let summary = &counters.outputs.sinks()["js"];
    let stored = sorted_numbers(&server.messages());
    assert!(summary.dropped_full > 0 && summary.delivered > 0, "{summary:?}");
    assert_eq!(summary.delivered + summary.dropped_full, EVENTS, "{summary:?}");
    assert_eq!(stored.len() as u64, summary.delivered, "what counts as delivered is in the stream");
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "each once: {stored:?}");
    assert_eq!(counters.sink_errors.load(Ordering::Relaxed), summary.dropped_full);
}

/// Origin ids of events.
fn origin_ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["origin"]["id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn captured_file_operations_reach_jetstream_once_each_with_their_origin() {
    if !root_or_skip("captured_file_operations_reach_jetstream_once_each_with_their_origin") {
        return;
    }
    let server = NatsServer::start();
    let mount = Mount::tmpfs();
    let out = tempfile::tempdir().unwrap();
    let file = |name: &str| out.path().join(name);
    let config = format!(
        r#"
[node]
id = "node-a"
[sinks.archive]
type = "file"
path = "{archive}"
[sinks.js]
type = "nats"
url = "{url}"
subject = "vexevent.{{type}}"
batch_events = 64
"#,
        archive = file("archive.jsonl").display(),
        url = server.url(),
    );
    std::fs::write(file("vexevent.toml"), config).unwrap();
    let vexevent = Vexevent::start_with_own_sinks(
        &[&mount.path],
        &["--config", file("vexevent.toml").to_str().unwrap()],
    );
    operations(&mount.path);
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);

    let archived = read_events(&file("archive.jsonl"));
    let ids = origin_ids(&archived);
    assert!(archived.len() >= 40, "{} events", archived.len());
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "origin ids are unique: {ids:?}");
    assert!(archived.iter().all(|e| e["origin"]["node"] == "node-a"));
    // A failed unlink and its error companion: same kernel record, different parts.
    let failed = archived.iter().find(|e| e["result"]["error"] == "ENOENT").expect("the failed unlink");
    let companion = archived
        .iter()
        .find(|e| {
            e["event_type"] == "ObservabilityErrorReported" && e["parent_event_id"] == failed["event_id"]
        })
        .expect("its error companion");
    assert_eq!(failed["origin"]["part"], 0);
    assert_eq!(companion["origin"]["part"], 1);
    assert_eq!(companion["local_sequence"], failed["local_sequence"]);

    let stored = server.messages();
    let stored_ids: Vec<String> = stored.iter().map(|s| s.msg_id.clone().unwrap()).collect();
    assert_eq!(stored_ids, ids, "the stream holds every event once, in output order");
    for (s, event) in stored.iter().zip(&archived) {
        assert_eq!(&s.event, event, "the message is the event's JSON");
        assert_eq!(s.subject, format!("vexevent.{}", event["event_type"].as_str().unwrap()));
    }
    let sinks = &finished.stats["sinks"];
    assert_eq!(sinks["js"]["delivered"].as_u64(), Some(archived.len() as u64));
    assert_eq!(finished.stats["userspace"]["sink_errors"].as_u64(), Some(0));
}

/// Real file operations in `dir`: creations, writes, directories, renames, deletions and one
/// failing deletion.
fn operations(dir: &Path) {
    for i in 0..10 {
        std::fs::write(dir.join(format!("f{i}")), b"data").unwrap();
    }
    for i in 0..5 {
        std::fs::create_dir(dir.join(format!("d{i}"))).unwrap();
        std::fs::rename(dir.join(format!("f{i}")), dir.join(format!("d{i}/f"))).unwrap();
    }
    for i in 5..10 {
        std::fs::remove_file(dir.join(format!("f{i}"))).unwrap();
    }
    assert!(std::fs::remove_file(dir.join("never-existed")).is_err());
}
