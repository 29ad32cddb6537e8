//! Root test of the live stream with real WebSocket clients (tokio-tungstenite): subscribers with
//! different queries get exactly the events they asked for, in order, with contiguous
//! subscription sequence numbers; a subscriber that does not read gets gap notices that account
//! for every event it missed, and does not stall the others. Each subscriber reads until the last
//! event the output says it selects, after the workload has gone on to events it does not select,
//! so an event it should not get would be seen. Plus: a non-loopback stream address without a
//! token is refused.

mod support;

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;
use support::{Mount, Vexevent, event_path_bytes, has_path_bytes, root_or_skip};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn subscribe(addr: &str, token: &str, query: &str) -> Socket {
    let url = format!("ws://{addr}/api/v1/semantic/events/stream?token={token}&{query}");
    tokio_tungstenite::connect_async(url).await.expect("connect to the stream").0
}

/// Reads messages until `done` says so (or a deadline passes).
async fn read_until(socket: &mut Socket, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut messages = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&messages) {
        let next = tokio::time::timeout_at(deadline, socket.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = next else { break };
        messages.push(serde_json::from_str(&text).expect("JSON message"));
    }
    messages
}

fn events(messages: &[Value]) -> Vec<&Value> {
    messages.iter().filter(|m| m.get("event").is_some()).collect()
}

fn assert_contiguous(messages: &[&Value]) {
    for (i, message) in messages.iter().enumerate() {
        assert_eq!(message["subscription_sequence"].as_u64(), Some(i as u64), "{message}");
    }
}

#[test]
fn subscribers_get_exactly_their_events_and_slow_ones_get_gap_notices() {
    if !root_or_skip("subscribers_get_exactly_their_events_and_slow_ones_get_gap_notices") {
        return;
    }
    let mount = Mount::tmpfs();
    let vexevent = Vexevent::start(&[&mount.path], &["--stream-addr", "127.0.0.1:0"]);
    let addr = vexevent.served_address("ws://");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let files_glob = format!("{}/f*", mount.path.display());
    let token = vexevent.token();
    let (mut mkdirs, mut files, mut slow) = runtime.block_on(async {
        (
            subscribe(&addr, &token, "event_types=FilesystemMkdir").await,
            subscribe(
                &addr,
                &token,
                &format!("categories=filesystem&filter={}", encode(&format!("path glob {files_glob:?}"))),
            )
            .await,
            subscribe(&addr, &token, "buffer=1").await,
        )
    });

    for i in 0..20 {
        std::fs::create_dir(mount.path.join(format!("d{i}"))).unwrap();
    }
    for i in 0..100 {
        std::fs::write(mount.path.join(format!("f{i}")), b"data").unwrap();
    }
    // Last, one more of each kind, twice: each subscription reads up to its own last event, so
    // the other kind's events just before it (which it must not get) are read and checked too.
    for end in ["end", "close"] {
        std::fs::create_dir(mount.path.join(format!("d_{end}"))).unwrap();
        std::fs::write(mount.path.join(format!("f_{end}")), b"end").unwrap();
    }
    let last = support::bytes(&mount.path.join("f_close"));
    vexevent.wait_for("the last write", Duration::from_secs(30), |events| {
        events.iter().filter(|e| has_path_bytes(e, &last)).count() >= 3
    });
    // Ground truth: what the JSON Lines output received, and which of it each subscription selects.
    let output = vexevent.events_so_far();
    let sequences = |select: &dyn Fn(&Value) -> bool| -> Vec<u64> {
        output.iter().filter(|e| select(e)).map(|e| e["global_sequence"].as_u64().unwrap()).collect()
    };
    let expected_mkdirs = sequences(&|e| e["event_type"] == "FilesystemMkdir");
    let expected_files = sequences(&|e| {
        event_path_bytes(&e["context"]["filesystem"]["path"])
            .is_some_and(|p| p.starts_with(&support::bytes(&mount.path.join("f"))))
    });
    let reached = |last: u64| {
        move |messages: &[Value]| {
            messages.iter().any(|m| m["event"]["global_sequence"].as_u64() == Some(last))
        }
    };

    let (mkdir_messages, file_messages, slow_messages) = runtime.block_on(async {
        let mkdir_messages = read_until(&mut mkdirs, reached(*expected_mkdirs.last().unwrap())).await;
        let file_messages = read_until(&mut files, reached(*expected_files.last().unwrap())).await;
        // The slow subscriber finally reads everything it was sent.
        let total = output.len();
        let slow_messages = read_until(&mut slow, |m| {
            let delivered = m.iter().filter(|x| x.get("event").is_some()).count();
            let dropped: u64 = m.iter().filter_map(|x| x["gap"]["dropped"].as_u64()).sum();
            delivered as u64 + dropped >= total as u64
        })
        .await;
        (mkdir_messages, file_messages, slow_messages)
    });
    let finished = vexevent.stop();

    let sequences_of = |events: &[&Value]| -> Vec<u64> {
        events.iter().map(|m| m["event"]["global_sequence"].as_u64().unwrap()).collect()
    };
    let mkdir_events = events(&mkdir_messages);
    assert_eq!(mkdir_events.len(), 22, "20 directories and the last two");
    assert_eq!(sequences_of(&mkdir_events), expected_mkdirs, "exactly the mkdirs, nothing else");
    assert!(mkdir_events.iter().all(|m| m["event"]["event_type"] == "FilesystemMkdir"));
    assert_contiguous(&mkdir_events);

    let file_events = events(&file_messages);
    assert_eq!(sequences_of(&file_events), expected_files, "exactly the files' events, nothing else");
    assert!(file_events.iter().all(|m| {
        m["event"]["event_type_code"].as_u64().unwrap() >> 8 == 1
            && event_path_bytes(&m["event"]["context"]["filesystem"]["path"])
                .is_some_and(|p| p.starts_with(&support::bytes(&mount.path.join("f"))))
    }));
    assert_contiguous(&file_events);
    let ids: Vec<u64> = file_events.iter().map(|m| m["event"]["global_sequence"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in stream order");

    // The slow one: every event either delivered or counted in a gap notice, and it was slow.
    let delivered = events(&slow_messages);
    assert_contiguous(&delivered);
    let dropped: u64 = slow_messages.iter().filter_map(|m| m["gap"]["dropped"].as_u64()).sum();
    assert!(dropped > 0, "a one-message buffer overflowed");
    assert_eq!(delivered.len() as u64 + dropped, output.len() as u64);
    assert_eq!(finished.stats["userspace"]["stream_dropped"].as_u64(), Some(dropped), "{}", finished.stats);
}

#[test]
fn a_remote_stream_needs_a_token() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vexevent"))
        .args(["run", "--watch", "/tmp", "--stream-addr", "0.0.0.0:0"])
        .env_remove("VEXEVENT_STREAM_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Refused at once; were the check to regress (as root), vexevent would run: end it, fail.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("vexevent started on a non-loopback address without a token");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("not loopback") && err.contains("--stream-token"), "{err}");
}
