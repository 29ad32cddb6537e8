//! End-to-end benchmark of the live stream's fan-out: how many concurrent WebSocket subscribers
//! one vexevent instance sustains, and what each costs. For each step it starts the real
//! `vexevent run --stream-addr 127.0.0.1:0` on a fresh tmpfs, connects N real tokio-tungstenite
//! clients from this process (bounded concurrency), each with its own query (most select one
//! file with `path_pattern`, every tenth selects `event_types=FilesystemMkdir`), writes one file
//! per subscriber plus ten directories, and checks that every subscriber received exactly the
//! events its query selects out of what the JSON Lines output received (same events, same
//! order, contiguous `subscription_sequence`, gap notices counted). It reports the server's RSS
//! (`VmRSS`) before and after connecting (memory per subscriber), the time to connect all,
//! when the last subscriber had its events after the workload ended, and the server's CPU.
//!
//! The clients run here and vexevent in a child process: each side needs one descriptor per
//! connection. Needs root. Run: `cargo bench --bench subscribers`. Environment:
//! `VEXEVENT_BENCH_SUBSCRIBERS` (comma-separated steps, default `1000,5000,10000,15000`),
//! `VEXEVENT_BENCH_CONNECT_CONCURRENCY` (connections in flight, default 256),
//! `VEXEVENT_BENCH_PATTERN=glob` (each file subscriber writes its path as a glob, `s<i>.[x]`,
//! which selects the same file but is checked against every event instead of looked up).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use serde_json::Value;
use support::{
    Mount, Vexevent,
    process::{cpu_time, rss_kib},
    root_or_skip,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// Directories the workload creates (what the `event_types` subscribers receive).
const DIRS: usize = 10;
/// Every `TYPE_EVERY`-th subscriber selects an event type instead of its own file.
const TYPE_EVERY: usize = 10;
/// Descriptors this process needs besides the connections (runtime, stdio, files).
const SPARE_FDS: u64 = 200;
/// How long connecting one step, or delivering its events, may take.
const STEP_DEADLINE: Duration = Duration::from_mins(3);
/// Attempts per connection (a refused connection is retried after a short pause).
const CONNECT_ATTEMPTS: u32 = 5;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn steps() -> Vec<usize> {
    std::env::var("VEXEVENT_BENCH_SUBSCRIBERS")
        .unwrap_or_else(|_| "1000,5000,10000,15000".to_owned())
        .split(',')
        .filter_map(|step| step.trim().parse().ok())
        .collect()
}

/// The soft limit on open descriptors, raised to the hard limit.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
    }
    limit.rlim_cur
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// What subscriber `i` asks for.
enum Query {
    /// Its own file, `s<i>.x`, as the exact path (or as a glob selecting only it).
    File { path: PathBuf, glob: bool },
    /// Every `FilesystemMkdir`.
    Mkdirs,
}

impl Query {
    fn of(i: usize, dir: &Path, glob: bool) -> Self {
        if i % TYPE_EVERY == TYPE_EVERY - 1 {
            Query::Mkdirs
        } else {
            Query::File { path: file(dir, i), glob }
        }
    }

    fn url(&self, addr: &str, token: &str) -> String {
        let query = match self {
            Query::File { path, glob: false } => format!("path_pattern={}", encode(&path.to_string_lossy())),
            Query::File { path, glob: true } => {
                let pattern = path.to_string_lossy().replace(".x", ".[x]");
                format!("path_pattern={}", encode(&pattern))
            }
            Query::Mkdirs => "event_types=FilesystemMkdir".to_owned(),
        };
        format!("ws://{addr}/api/v1/semantic/events/stream?token={token}&{query}")
    }
}

/// The `global_sequence` of each event each query selects, out of the JSON Lines output (indexed
/// by path: comparing every query with every event would cost this process minutes at 10,000).
fn expected_sequences(queries: &[Query], output: &[Value]) -> Vec<Vec<u64>> {
    let mut by_path: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    let mut mkdirs = Vec::new();
    for event in output {
        let Some(sequence) = event["global_sequence"].as_u64() else { continue };
        if event["event_type"] == "FilesystemMkdir" {
            mkdirs.push(sequence);
        }
        if let Some(path) = support::event_path_bytes(&event["context"]["filesystem"]["path"]) {
            by_path.entry(path).or_default().push(sequence);
        }
    }
    queries
        .iter()
        .map(|query| match query {
            Query::File { path, .. } => by_path.get(&support::bytes(path)).cloned().unwrap_or_default(),
            Query::Mkdirs => mkdirs.clone(),
        })
        .collect()
}

/// Subscriber `i`'s file.
fn file(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("s{i}.x"))
}

/// What one subscriber received: each message with the time it arrived.
struct Received {
    messages: Vec<(Instant, String)>,
    error: Option<String>,
}

/// Connects (retrying refusals), reports it, then records every message until told to stop.
async fn subscriber(
    url: String,
    connect_slots: Arc<Semaphore>,
    connected: mpsc::UnboundedSender<Result<(), String>>,
    count: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> Received {
    let mut received = Received { messages: Vec::new(), error: None };
    let mut socket = {
        let _slot = connect_slots.acquire().await.expect("the semaphore is never closed");
        let mut attempt = 1;
        loop {
            match tokio_tungstenite::connect_async(&url).await {
                Ok((socket, _)) => break socket,
                Err(_) if attempt < CONNECT_ATTEMPTS => {
                    attempt += 1;
                    retry_pause(attempt).await;
                }
                Err(error) => {
                    let _ = connected.send(Err(error.to_string()));
                    received.error = Some(error.to_string());
                    return received;
                }
            }
        }
    };
    let _ = connected.send(Ok(()));
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    received.messages.push((Instant::now(), text.to_string()));
                    count.fetch_add(1, Ordering::Release);
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    received.error = Some(error.to_string());
                    break;
                }
                None => {
                    received.error = Some("the server closed the connection".to_owned());
                    break;
                }
            },
            _ = stop.changed() => break,
        }
    }
    received
}

/// Backs off before retrying a connection: 50 ms, 100 ms, 200 ms, ...
async fn retry_pause(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(25 << attempt.min(6))).await;
}

/// One step's figures.
struct Step {
    subscribers: usize,
    connect: Duration,
    connect_failures: usize,
    rss_before_kib: u64,
    rss_connected_kib: u64,
    rss_delivered_kib: u64,
    events: usize,
    messages: usize,
    /// Per subscriber: last expected message's arrival after the workload ended (zero when it
    /// arrived while the workload was still running).
    completion: Vec<Duration>,
    workload: Duration,
    cpu_connect: Duration,
    cpu_fanout: Duration,
    exact: usize,
    gaps: u64,
    extra: usize,
    missing: usize,
    stream_dropped: u64,
    lost: u64,
    /// Kernel-to-file p99 of the JSON Lines output running beside the stream, in microseconds.
    file_p99_us: u64,
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

fn mib(kib: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "memory sizes fit in 52 bits")]
    let mib = kib as f64 / 1024.0;
    format!("{mib:.1}")
}

#[expect(clippy::too_many_lines, reason = "one step of the benchmark, read top to bottom")]
fn run_step(runtime: &tokio::runtime::Runtime, n: usize, concurrency: usize, glob: bool) -> Step {
    let mount = Mount::tmpfs();
    let vexevent = Vexevent::start(&[&mount.path], &["--stream-addr", "127.0.0.1:0"]);
    let pid = vexevent.pid();
    let addr = vexevent.served_address("ws://");
    let token = vexevent.token();
    let queries: Vec<Query> = (0..n).map(|i| Query::of(i, &mount.path, glob)).collect();
    let counts: Vec<Arc<AtomicUsize>> = (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect();

    // Connect everyone.
    let rss_before_kib = rss_kib(pid);
    let cpu_before = cpu_time(pid);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let tasks: Vec<_> = queries
        .iter()
        .zip(&counts)
        .map(|(query, count)| {
            runtime.spawn(subscriber(
                query.url(&addr, &token),
                Arc::clone(&slots),
                connected_tx.clone(),
                Arc::clone(count),
                stop_rx.clone(),
            ))
        })
        .collect();
    drop(connected_tx);
    let connect_failures = runtime.block_on(async {
        let mut failures = 0;
        for _ in 0..n {
            match tokio::time::timeout(STEP_DEADLINE, connected_rx.recv()).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(_))) => failures += 1,
                Ok(None) | Err(_) => panic!("connecting {n} subscribers did not finish in time"),
            }
        }
        failures
    });
    let connect = started.elapsed();
    let cpu_connect = cpu_time(pid).saturating_sub(cpu_before);
    let rss_connected_kib = rss_kib(pid);

    // The workload: one file per subscriber, then the directories.
    let cpu_before = cpu_time(pid);
    let workload_start = Instant::now();
    for i in 0..n {
        std::fs::write(file(&mount.path, i), b"x").expect("workload file");
    }
    for d in 0..DIRS {
        std::fs::create_dir(mount.path.join(format!("d{d}"))).expect("workload directory");
    }
    let workload_end = Instant::now();

    // Ground truth: what the JSON Lines output received, once the last directory is in it.
    let last_dir = format!("\"{}\"", mount.path.join(format!("d{}", DIRS - 1)).display());
    let deadline = Instant::now() + STEP_DEADLINE;
    while !std::fs::read_to_string(&vexevent.output).is_ok_and(|text| text.contains(&last_dir)) {
        assert!(Instant::now() < deadline, "the workload's events never reached the output");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = vexevent.events_so_far();
    let expected = expected_sequences(&queries, &output);

    // Wait (deadline, no fixed sleep) until every subscriber has at least its share.
    let deadline = Instant::now() + STEP_DEADLINE;
    while Instant::now() < deadline
        && counts.iter().zip(&expected).any(|(count, wanted)| count.load(Ordering::Acquire) < wanted.len())
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu_fanout = cpu_time(pid).saturating_sub(cpu_before);
    let rss_delivered_kib = rss_kib(pid);
    let _ = stop_tx.send(true);
    let received: Vec<Received> = runtime.block_on(async {
        let mut received = Vec::with_capacity(n);
        for task in tasks {
            received.push(task.await.expect("subscriber task"));
        }
        received
    });
    let finished = vexevent.stop();

    // Check every subscriber against the ground truth.
    let mut step = Step {
        subscribers: n,
        connect,
        connect_failures,
        rss_before_kib,
        rss_connected_kib,
        rss_delivered_kib,
        events: output.len(),
        messages: 0,
        completion: Vec::with_capacity(n),
        workload: workload_end - workload_start,
        cpu_connect,
        cpu_fanout,
        exact: 0,
        gaps: 0,
        extra: 0,
        missing: 0,
        stream_dropped: finished.stats["userspace"]["stream_dropped"].as_u64().unwrap_or(u64::MAX),
        lost: ["lost_reported", "unaccounted"]
            .iter()
            .map(|field| finished.stats["loss"][field].as_u64().unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add),
        file_p99_us: finished.stats["latency"]["p99_us"].as_u64().unwrap_or(0),
    };
    let mut first_error = None;
    for (received, wanted) in received.iter().zip(&expected) {
        if let (None, Some(error)) = (&first_error, &received.error) {
            first_error = Some(error.clone());
        }
        let messages: Vec<(Instant, Value)> = received
            .messages
            .iter()
            .map(|(at, text)| (*at, serde_json::from_str(text).expect("a JSON message")))
            .collect();
        step.messages += messages.len();
        step.gaps += messages.iter().filter_map(|(_, m)| m["gap"]["dropped"].as_u64()).sum::<u64>();
        let events: Vec<&(Instant, Value)> =
            messages.iter().filter(|(_, m)| m.get("event").is_some()).collect();
        let contiguous = events
            .iter()
            .enumerate()
            .all(|(i, (_, m))| m["subscription_sequence"].as_u64() == Some(i as u64));
        let got: Vec<u64> =
            events.iter().filter_map(|(_, m)| m["event"]["global_sequence"].as_u64()).collect();
        step.extra += got.len().saturating_sub(wanted.len());
        step.missing += wanted.len().saturating_sub(got.len());
        if contiguous && got == *wanted {
            step.exact += 1;
        }
        if let Some((at, _)) = events.get(wanted.len().wrapping_sub(1)) {
            step.completion.push(at.saturating_duration_since(workload_end));
        }
    }
    step.completion.sort_unstable();
    if let Some(error) = first_error {
        println!("  {n} subscribers: first client error: {error}");
    }
    step
}

fn main() {
    if !root_or_skip("subscribers") {
        return;
    }
    let fds = raise_fd_limit();
    let concurrency =
        usize::try_from(env_or("VEXEVENT_BENCH_CONNECT_CONCURRENCY", 256)).unwrap_or(256).max(1);
    let glob = std::env::var("VEXEVENT_BENCH_PATTERN").is_ok_and(|p| p == "glob");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("client runtime");
    println!(
        "subscribers: real WebSocket clients in this process, vexevent in a child; one file per subscriber \
         plus {DIRS} directories; file subscribers by {}; {concurrency} connections in flight",
        if glob { "glob" } else { "exact path" }
    );
    println!(
        "{:>6} {:>9} {:>7} {:>8} {:>9} {:>8} {:>9} {:>7} {:>9} {:>9} {:>15} {:>9} {:>9} {:>11} {:>6} {:>6} {:>9}",
        "subs",
        "connect",
        "conn/s",
        "rss MiB",
        "+subs MiB",
        "KiB/sub",
        "after MiB",
        "events",
        "messages",
        "workload",
        "done p50/max",
        "cpu conn",
        "cpu fan",
        "exact",
        "gaps",
        "lost",
        "file p99",
    );
    for n in steps() {
        let needed = n as u64 + SPARE_FDS;
        if needed > fds {
            println!(
                "SKIP {n} subscribers: needs {needed} descriptors here and in vexevent, the limit is {fds}"
            );
            continue;
        }
        let step = run_step(&runtime, n, concurrency, glob);
        print_step(&step);
    }
}

fn print_step(step: &Step) {
    let connected = step.subscribers - step.connect_failures;
    let added = step.rss_connected_kib.saturating_sub(step.rss_before_kib);
    #[expect(clippy::cast_precision_loss, reason = "counts and sizes fit in 52 bits")]
    let (per_sub, rate) =
        (added as f64 / connected.max(1) as f64, connected as f64 / step.connect.as_secs_f64());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{:>6} {:>8.2}s {:>7.0} {:>8} {:>9} {:>8.1} {:>9} {:>7} {:>9} {:>8.0}ms {:>15} {:>8.2}s {:>8.2}s {:>11} {:>6} {:>6} {:>7.1}ms",
        step.subscribers,
        step.connect.as_secs_f64(),
        rate,
        mib(step.rss_before_kib),
        mib(added),
        per_sub,
        mib(step.rss_delivered_kib),
        step.events,
        step.messages,
        ms(step.workload),
        format!("{:.0}/{:.0}ms", ms(percentile(&step.completion, 50)), ms(percentile(&step.completion, 100))),
        step.cpu_connect.as_secs_f64(),
        step.cpu_fanout.as_secs_f64(),
        format!("{}/{}", step.exact, step.subscribers),
        step.gaps,
        step.lost,
        ms(Duration::from_micros(step.file_p99_us)),
    );
    if step.connect_failures > 0 || step.extra > 0 || step.missing > 0 || step.stream_dropped > 0 {
        println!(
            "  {} subscribers: {} connections failed, {} events missing, {} extra, stream_dropped {}",
            step.subscribers, step.connect_failures, step.missing, step.extra, step.stream_dropped
        );
    }
}
