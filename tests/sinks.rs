//! Sinks against real receivers, without root: a webhook receiver that fails and recovers, Unix
//! and TCP listeners, and a destination that never comes up; with root, a file on a full disk
//! that gets space again. Every event delivered once, in order, or counted.

mod support;

use std::{
    io::{BufRead, BufReader},
    os::unix::net::UnixListener,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use support::{Mount, root_or_skip, webhook::webhook_receiver};
use vexevent::{
    pipeline::WhenFull,
    sinks::{
        Delivery, Destination, FileAccess, Queued, Rotation, SinkSpec, Sinks, SocketAddress, WebhookSettings,
    },
    telemetry::Counters,
};

fn delivery(batch_events: usize) -> Delivery {
    Delivery {
        batch_events,
        linger: Duration::from_millis(5),
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        max_retries: 0,
    }
}

fn spec(name: &str, destination: Destination, queue: usize, when_full: WhenFull) -> SinkSpec {
    SinkSpec { name: name.into(), destination, queue, when_full, delivery: delivery(10) }
}

fn item(n: u64) -> Queued {
    Queued { line: format!(r#"{{"n":{n}}}"#).into(), urgent: false, sequence: n, monotonic_ns: 0 }
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_webhook_that_fails_then_recovers_gets_every_batch_once_in_order() {
    let (url, received) = webhook_receiver(3);
    let counters = Arc::new(Counters::default());
    let settings = WebhookSettings { url, timeout: Duration::from_secs(5), headers: Vec::new() };
    let sinks =
        Sinks::start(&[spec("hook", Destination::Webhook(settings), 1000, WhenFull::Block)], &counters)
            .unwrap();
    for n in 0..95 {
        sinks.offer(0, [item(n)], &counters);
    }
    sinks.finish();
    let received = received.lock().unwrap();
    let events: Vec<u64> = received.events().iter().map(|e| e["n"].as_u64().unwrap()).collect();
    assert_eq!(events, (0..95).collect::<Vec<_>>(), "every event once, in order");
    let ids: std::collections::BTreeSet<&String> = received.batches.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), received.batches.len(), "batch numbers are unique");
    // The three refused requests were the first batch, sent again under the same number.
    let first = &received.batches[0].0;
    assert!(!first.is_empty());
    assert_eq!(received.attempts[..4], [first.clone(), first.clone(), first.clone(), first.clone()]);
    assert_eq!(received.attempts.len(), received.batches.len() + 3);
    let summary = &counters.outputs.sinks()["hook"];
    assert_eq!(summary.delivered, 95);
    assert_eq!(summary.failed_attempts, 3);
    assert_eq!(counters.sink_errors.load(Ordering::Relaxed), 0);
    assert!(!summary.down);
}

/// Runs a socket sink against a listener and returns the lines the listener read.
fn lines_through_socket(
    address: SocketAddress,
    accept: impl FnOnce() -> Box<dyn std::io::Read>,
) -> Vec<String> {
    let counters = Arc::new(Counters::default());
    let sinks = Sinks::start(
        &[spec(
            "tool",
            Destination::Socket { address, timeout: Duration::from_secs(5) },
            100,
            WhenFull::Block,
        )],
        &counters,
    )
    .unwrap();
    for n in 0..20 {
        sinks.offer(0, [item(n)], &counters);
    }
    let stream = accept();
    sinks.finish();
    BufReader::new(stream).lines().map(Result::unwrap).collect()
}

#[test]
fn a_socket_sink_writes_json_lines_to_a_unix_or_tcp_listener() {
    let expected: Vec<String> = (0..20).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tool.sock");
    let unix = UnixListener::bind(&path).unwrap();
    let lines = lines_through_socket(SocketAddress::Unix(path), || Box::new(unix.accept().unwrap().0));
    assert_eq!(lines, expected);
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = SocketAddress::Tcp(tcp.local_addr().unwrap().to_string());
    let lines = lines_through_socket(address, || Box::new(tcp.accept().unwrap().0));
    assert_eq!(lines, expected);
}

#[test]
fn a_sink_that_stays_down_counts_every_event_it_could_not_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let address = SocketAddress::Unix(dir.path().join("nobody-listens.sock"));
    let counters = Arc::new(Counters::default());
    let sinks = Sinks::start(
        &[spec(
            "down",
            Destination::Socket { address, timeout: Duration::from_secs(5) },
            4,
            WhenFull::DropNewest,
        )],
        &counters,
    )
    .unwrap();
    for n in 0..50 {
        sinks.offer(0, [item(n)], &counters);
    }
    wait_until("the sink to be marked down", || !sinks.is_up(0));
    let _ = sinks.give_up_handle().set(Instant::now());
    sinks.finish();
    let summary = &counters.outputs.sinks()["down"];
    assert_eq!(summary.delivered, 0);
    assert!(summary.dropped_full > 0, "{summary:?}");
    assert_eq!(summary.dropped_full + summary.dropped_shutdown, 50, "{summary:?}");
    assert_eq!(counters.sink_errors.load(Ordering::Relaxed), 50);
    assert_eq!(summary.queued, 0);
}

#[test]
fn max_retries_drops_a_batch_and_counts_it() {
    let (url, received) = webhook_receiver(usize::MAX);
    let counters = Arc::new(Counters::default());
    let settings = WebhookSettings { url, timeout: Duration::from_secs(5), headers: Vec::new() };
    let mut spec = spec("hook", Destination::Webhook(settings), 100, WhenFull::Block);
    spec.delivery.max_retries = 2;
    let sinks = Sinks::start(&[spec], &counters).unwrap();
    for n in 0..5 {
        sinks.offer(0, [item(n)], &counters);
    }
    sinks.finish();
    let summary = &counters.outputs.sinks()["hook"];
    assert_eq!(summary.dropped_failed, 5, "{summary:?}");
    assert!(
        summary.failed_attempts > 0 && summary.failed_attempts % 3 == 0,
        "each batch: the attempt and 2 retries"
    );
    let received = received.lock().unwrap();
    assert_eq!(summary.failed_attempts, received.refused as u64, "every attempt reached the receiver");
    assert!(received.batches.is_empty());
}

#[test]
fn a_full_disk_fails_batches_that_are_then_written_once_whole_when_space_returns() {
    if !root_or_skip("a_full_disk_fails_batches_that_are_then_written_once_whole_when_space_returns") {
        return;
    }
    // 64 KiB, of which the filler leaves 16 KiB: room for fewer than half of the events.
    let mount = Mount::tmpfs_of_size("64k");
    let filler = mount.path.join("filler");
    std::fs::write(&filler, vec![0u8; 48 << 10]).unwrap();
    let path = mount.path.join("events.jsonl");
    let counters = Arc::new(Counters::default());
    let file = Destination::File {
        path: path.clone(),
        rotation: Rotation::default(),
        access: FileAccess { mode: 0o600, group: None },
    };
    let sinks = Sinks::start(&[spec("file", file, 10_000, WhenFull::Block)], &counters).unwrap();
    for n in 0..3000 {
        sinks.offer(0, [item(n)], &counters);
    }
    wait_until("the sink to find the disk full", || !sinks.is_up(0));
    std::fs::remove_file(&filler).unwrap();
    sinks.finish();

    let text = std::fs::read_to_string(&path).unwrap();
    let numbers: Vec<u64> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["n"].as_u64().unwrap())
        .collect();
    let first_wrong = numbers.iter().zip(0..).position(|(n, expected)| *n != expected);
    assert_eq!(
        (numbers.len(), first_wrong),
        (3000, None),
        "every event once, in order, no line split (from {first_wrong:?}: {:?})",
        first_wrong.map(|i| &numbers[i..(i + 20).min(numbers.len())])
    );
    assert!(text.ends_with('\n'));
    let summary = &counters.outputs.sinks()["file"];
    assert_eq!(summary.delivered, 3000, "{summary:?}");
    assert!(summary.failed_attempts > 0, "the disk was full: {summary:?}");
    assert!(!summary.down, "{summary:?}");
    assert_eq!(counters.sink_errors.load(Ordering::Relaxed), 0);
}
