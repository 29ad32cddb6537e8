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
//! shared machine).
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
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
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

/// `clients` viewers of the dashboard's summary stream until `stop`; each counts the frames
/// it read in `frames`.
fn viewers(
    control: &str,
    token: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<(thread::JoinHandle<()>, Arc<AtomicUsize>)> {
    (0..clients)
        .map(|_| {
            let frames = Arc::new(AtomicUsize::new(0));
            let (url, token, stop, counted) = (
                format!("http://{control}/dashboard/events"),
                token.to_owned(),
                Arc::clone(stop),
                Arc::clone(&frames),
            );
            let handle = thread::spawn(move || {
                let agent: ureq::Agent =
                    ureq::Agent::config_builder().timeout_global(Some(Duration::from_mins(2))).build().into();
                let response = agent
                    .get(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .call()
                    .expect("the dashboard stream answers");
                for line in BufReader::new(response.into_body().into_reader()).lines() {
                    if line.expect("the stream reads").starts_with("data:") {
                        counted.fetch_add(1, Ordering::Relaxed);
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
    for round in 0..rounds {
        let mut without = (0.0, 0.0);
        let mut with = (0.0, 0.0);
        for viewers_first in [round % 2 == 1, round % 2 == 0] {
            if viewers_first {
                let stop = Arc::new(AtomicBool::new(false));
                let connected = viewers(&control, &token, clients, &stop);
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
}
