//! End-to-end benchmark of what dashboard viewers cost: the real `vexevent run` with the analyse
//! stage and the control API on a tmpfs, under a steady paced workload (writes from this
//! process), its CPU time measured from /proc over phases with no viewer and with `clients`
//! viewers (real HTTP clients following `GET /dashboard/events`, the dashboard's Server-Sent
//! Events, with the bearer token). The two kinds of phase alternate, and which comes first
//! alternates per round. A "with viewers" phase includes connecting them (each receives the
//! summaries history first) and every frame they read; each viewer must have read a frame, or
//! the run fails. It prints vexevent's CPU (percent of one core) per phase, the difference per
//! round, and the median and spread of the difference: what the viewers cost; and the same for
//! the main thread alone, which serves the control API and the dashboard (less noisy on a
//! shared machine). Then the lag of the windows the viewers read live: from a window's end (its
//! frame's `wall_ms`) to its close in the analyse stage (`closed_wall_us`: the watermark's delay),
//! to its receipt by a viewer (the system clock at receipt; goal: within 100 ms), and from its close
//! to its frame handed to each viewer's stream, measured by vexevent (the stats'
//! `dashboard_close_to_send`; goal: under 1 ms): p50, p99 and max.
//!
//! Needs root. Run: `cargo bench --bench dashboard_clients`. Environment:
//! `VEXEVENT_BENCH_CLIENTS` (viewers, default 20), `VEXEVENT_BENCH_ROUNDS` (default 4),
//! `VEXEVENT_BENCH_PHASE_SECS` (default 8), `VEXEVENT_BENCH_WRITES_PER_SEC` (default 5000).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use support::{
    Mount, Vexevent,
    process::{cpu_time, main_thread_cpu_time},
    root_or_skip,
};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Writes `file` at `per_sec` writes per second until `stop`.
fn paced_writer(file: &Path, per_sec: u64, stop: &AtomicBool) {
    let started = Instant::now();
    let mut done: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX) * per_sec / 1_000_000;
        if done < due {
            std::fs::write(file, b"dashboard bench").expect("the workload writes");
            done += 1;
        } else {
            thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The system clock, in microseconds since the Unix epoch.
fn wall_us() -> u64 {
    u64::try_from(SystemTime::UNIX_EPOCH.elapsed().expect("a clock after 1970").as_micros())
        .unwrap_or(u64::MAX)
}

/// The lag of one window read live by one viewer, in microseconds from the window's end.
#[derive(Clone, Copy)]
struct Lag {
    end_ms: u64,
    closed: u64,
    received: u64,
}

impl Lag {
    /// The lag of the window in `frame` (a summary's JSON) received now, if it closed after
    /// `connected_us` (not one of the history the viewer reads first).
    fn of(frame: &str, connected_us: u64) -> Option<Lag> {
        let received_us = wall_us();
        let frame: serde_json::Value = serde_json::from_str(frame).expect("a summary is JSON");
        let (end_ms, closed_us) = (frame["wall_ms"].as_u64()?, frame["closed_wall_us"].as_u64()?);
        (closed_us >= connected_us).then(|| Lag {
            end_ms,
            closed: closed_us.saturating_sub(end_ms * 1_000),
            received: received_us.saturating_sub(end_ms * 1_000),
        })
    }
}

/// `clients` viewers of the dashboard's summary stream until `stop`; each counts the frames
/// it read in `frames`, and adds the lag of those closed after it connected to `lags`.
fn viewers(
    control: &str,
    token: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
    lags: &Arc<Mutex<Vec<Lag>>>,
) -> Vec<(thread::JoinHandle<()>, Arc<AtomicUsize>)> {
    (0..clients)
        .map(|_| {
            let frames = Arc::new(AtomicUsize::new(0));
            let (url, token, stop, counted, lags) = (
                format!("http://{control}/dashboard/events"),
                token.to_owned(),
                Arc::clone(stop),
                Arc::clone(&frames),
                Arc::clone(lags),
            );
            let handle = thread::spawn(move || {
                let agent: ureq::Agent =
                    ureq::Agent::config_builder().timeout_global(Some(Duration::from_mins(2))).build().into();
                let connected_us = wall_us();
                let response = agent
                    .get(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .call()
                    .expect("the dashboard stream answers");
                for line in BufReader::new(response.into_body().into_reader()).lines() {
                    let line = line.expect("the stream reads");
                    if let Some(frame) = line.strip_prefix("data:") {
                        counted.fetch_add(1, Ordering::Relaxed);
                        if let Some(lag) = Lag::of(frame, connected_us) {
                            lags.lock().expect("the lags").push(lag);
                        }
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            });
            (handle, frames)
        })
        .collect()
}

/// vexevent's CPU over one phase, whole and its main thread's (which serves the control API and
/// the dashboard), in percent of one core.
fn phase_cpu(pid: u32, length: Duration) -> (f64, f64) {
    let (cpu, main, wall) = (cpu_time(pid), main_thread_cpu_time(pid), Instant::now());
    thread::sleep(length);
    let percent = |used: Duration| used.as_secs_f64() * 100.0 / wall.elapsed().as_secs_f64();
    (percent(cpu_time(pid).saturating_sub(cpu)), percent(main_thread_cpu_time(pid).saturating_sub(main)))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `values` (microseconds) as "p50 P us, p99 P us, max M us".
fn percentiles(mut values: Vec<u64>) -> String {
    values.sort_unstable();
    let at = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index"
        )]
        let index = ((values.len() - 1) as f64 * q).round() as usize;
        values[index]
    };
    format!("p50 {} us, p99 {} us, max {} us", at(0.5), at(0.99), at(1.0))
}

/// The analyse stage's window close to a frame handed to a viewer's stream, from vexevent's stats.
fn close_to_send(control: &str, token: &str) -> serde_json::Value {
    let body = ureq::get(format!("http://{control}/api/v1/control/stats"))
        .header("authorization", format!("Bearer {token}"))
        .call()
        .expect("the stats answer")
        .into_body()
        .read_to_string()
        .expect("the stats read");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("the stats are JSON");
    stats["dashboard_close_to_send"].clone()
}

fn main() {
    if !root_or_skip("dashboard_clients benchmark") {
        return;
    }
    let clients = usize::try_from(env_or("VEXEVENT_BENCH_CLIENTS", 20)).unwrap_or(20);
    let rounds = env_or("VEXEVENT_BENCH_ROUNDS", 4);
    let phase = Duration::from_secs(env_or("VEXEVENT_BENCH_PHASE_SECS", 8));
    let per_sec = env_or("VEXEVENT_BENCH_WRITES_PER_SEC", 5000);

    let mount = Mount::tmpfs();
    let config_dir = tempfile::tempdir().expect("temp dir");
    let config = config_dir.path().join("vexevent.toml");
    std::fs::write(&config, "[analyse]\nenabled = true\n[sinks.null]\ntype = \"null\"\n").expect("config");
    let vexevent = Vexevent::start_with_own_sinks(
        &[&mount.path],
        &["--config", config.to_str().expect("UTF-8 path"), "--control-addr", "127.0.0.1:0"],
    );
    let (control, token, pid) = (vexevent.served_address("http://"), vexevent.token(), vexevent.pid());

    let stop_writer = Arc::new(AtomicBool::new(false));
    let writer = {
        let (file, stop) = (mount.path.join("hot"), Arc::clone(&stop_writer));
        thread::spawn(move || paced_writer(&file, per_sec, &stop))
    };
    println!(
        "dashboard_clients: vexevent with the analyse stage, {per_sec} writes/s, {clients} viewers of /dashboard/events, {rounds} rounds of two {}-s phases",
        phase.as_secs()
    );
    // Let the pipeline and the first windows settle before measuring.
    thread::sleep(Duration::from_secs(2));
    let (mut differences, mut main_differences) = (Vec::new(), Vec::new());
    let lags = Arc::new(Mutex::new(Vec::new()));
    for round in 0..rounds {
        let mut without = (0.0, 0.0);
        let mut with = (0.0, 0.0);
        for viewers_first in [round % 2 == 1, round % 2 == 0] {
            if viewers_first {
                let stop = Arc::new(AtomicBool::new(false));
                let connected = viewers(&control, &token, clients, &stop, &lags);
                with = phase_cpu(pid, phase);
                stop.store(true, Ordering::Relaxed);
                for (handle, frames) in connected {
                    handle.join().expect("a viewer thread");
                    assert!(frames.load(Ordering::Relaxed) > 0, "a viewer read no summary");
                }
            } else {
                without = phase_cpu(pid, phase);
            }
        }
        let first = if round % 2 == 1 { "viewers first" } else { "no viewers first" };
        println!(
            "  round {round} ({first}): vexevent CPU {:.1}% of a core without viewers, {:.1}% with {clients}: difference {:+.1} points (main thread {:.2}% -> {:.2}%)",
            without.0,
            with.0,
            with.0 - without.0,
            without.1,
            with.1
        );
        differences.push(with.0 - without.0);
        main_differences.push(with.1 - without.1);
    }
    stop_writer.store(true, Ordering::Relaxed);
    writer.join().expect("the writer");
    let sent = close_to_send(&control, &token);
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "vexevent failed: {:?}", finished.stderr);
    let spread = |values: &[f64]| {
        values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - values.iter().copied().fold(f64::INFINITY, f64::min)
    };
    println!(
        "dashboard_clients: {clients} viewers cost {:+.1} points of one core (median of {rounds} rounds, spread {:.1} points; goal: under 5); on the thread serving them {:+.2} points (spread {:.2})",
        median(&mut differences.clone()),
        spread(&differences),
        median(&mut main_differences.clone()),
        spread(&main_differences)
    );
    let lags = lags.lock().expect("the lags").clone();
    assert!(!lags.is_empty(), "no viewer read a window live");
    let mut windows: Vec<u64> = lags.iter().map(|lag| lag.end_ms).collect();
    windows.sort_unstable();
    windows.dedup();
    println!(
        "dashboard_clients: {} windows read live ({} frames over the viewers): window end to close {}; window end to receipt {} (goal: within 100 ms); close to frame sent {} us p50, {} us p99, {} us max over {} frames (goal: under 1 ms)",
        windows.len(),
        lags.len(),
        percentiles(lags.iter().map(|lag| lag.closed).collect()),
        percentiles(lags.iter().map(|lag| lag.received).collect()),
        sent["p50_us"],
        sent["p99_us"],
        sent["max_us"],
        sent["events"]
    );
}
