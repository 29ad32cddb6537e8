//! End-to-end capture benchmark: workloads run untraced and traced side by side (alternating runs
//! in one process, because these machines are shared and noisy; odd rounds run untraced first,
//! even rounds traced first), reporting the workload's slowdown ratio, events delivered /
//! performed / lost, events per second and the CPU vexevent used per delivered event (both from
//! the workload's start to the end of the drain after it: the last write to the output), and
//! kernel-to-sink latency, with the spread over rounds. Traced means `vexevent run` with default
//! settings (every operation type), every event delivered as JSON Lines to a file on disk. The
//! benchmark exits non-zero when open-close or mixed lost an event.
//!
//! Workloads: `open-close` (one thread, tight loop), `mixed` (create, write 4 KiB, close, rename,
//! unlink over 100 files), `threads` (one open/close thread per CPU), `paced` (100,000 events/s
//! for latency), and `hooks-only` (probes attached, everything filtered at entry: what the hooks
//! alone cost). With `bpftrace` or libbpf-tools `opensnoop` installed, the open/close loop also
//! runs under them printing every open, for comparison.
//!
//! Needs root. Run: `cargo bench --bench capture_overhead` or `cargo xtask bench`. Environment:
//! `VEXEVENT_BENCH_OPS` (iterations per run, default 200000), `VEXEVENT_BENCH_ROUNDS` (default 3).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Bindfs, Mount, Vexevent, process::cpu_time, root_or_skip};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path")
}

fn check(ret: i32, what: &str) {
    assert!(ret >= 0, "{what} failed: {}", std::io::Error::last_os_error());
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    OpenClose,
    Mixed,
    Threads,
}

impl Workload {
    /// Events one iteration performs (per thread).
    fn events_per_iteration(self) -> u64 {
        match self {
            Workload::OpenClose | Workload::Threads => 2,
            Workload::Mixed => 5,
        }
    }

    fn threads(self) -> u64 {
        match self {
            Workload::Threads => {
                u64::try_from(std::thread::available_parallelism().map_or(1, usize::from)).unwrap_or(1)
            }
            _ => 1,
        }
    }
}

/// One thread's loop; returns iterations per second.
fn run_loop(workload: Workload, dir: &Path, thread: u64, ops: u64, pace: Option<Duration>) -> f64 {
    let file = c_path(&dir.join(format!("target-{thread}")));
    let names: Vec<(CString, CString)> = (0..100)
        .map(|i| (c_path(&dir.join(format!("m{thread}-{i}"))), c_path(&dir.join(format!("r{thread}-{i}")))))
        .collect();
    let block = [7u8; 4096];
    let start = Instant::now();
    for i in 0..ops {
        if let Some(pace) = pace {
            let due = start + pace.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
            while Instant::now() < due {
                std::hint::spin_loop();
            }
        }
        // SAFETY: valid NUL-terminated paths and buffers; fds are closed in the same iteration.
        unsafe {
            match workload {
                Workload::OpenClose | Workload::Threads => {
                    let fd = libc::open(file.as_ptr(), libc::O_RDONLY);
                    check(fd, "open");
                    libc::close(fd);
                }
                Workload::Mixed => {
                    let (name, renamed) = &names[usize::try_from(i % 100).unwrap_or(0)];
                    let fd = libc::open(name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644);
                    check(fd, "create");
                    check(i32::from(libc::write(fd, block.as_ptr().cast(), block.len()) > 0), "write");
                    libc::close(fd);
                    check(libc::rename(name.as_ptr(), renamed.as_ptr()), "rename");
                    check(libc::unlink(renamed.as_ptr()), "unlink");
                }
            }
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "a rate needs no more than 52 bits")]
    let ops = ops as f64;
    ops / start.elapsed().as_secs_f64()
}

/// Runs the workload on all its threads; returns total iterations per second.
fn run_workload(workload: Workload, dir: &Path, ops: u64, pace: Option<Duration>) -> f64 {
    let dir = dir.to_path_buf();
    let handles: Vec<_> = (0..workload.threads())
        .map(|thread| {
            let dir = dir.clone();
            std::thread::spawn(move || run_loop(workload, &dir, thread, ops, pace))
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("workload thread")).sum()
}

struct Traced {
    rate: f64,
    delivered: u64,
    lost: u64,
    /// vexevent's CPU from the workload's start to the end of the drain.
    cpu: Duration,
    /// From the workload's start to the end of the drain.
    elapsed: Duration,
    stats: Value,
}

/// How long the output must stay unchanged for the drain to count as over.
const QUIET: Duration = Duration::from_millis(300);

/// Waits until `output` has stopped growing for [`QUIET`]; returns when it last grew.
fn drained(output: &Path) -> Instant {
    let size = || std::fs::metadata(output).map_or(0, |m| m.len());
    let (mut last_size, mut last_growth) = (size(), Instant::now());
    while last_growth.elapsed() < QUIET {
        std::thread::sleep(Duration::from_millis(5));
        let now = size();
        if now != last_size {
            (last_size, last_growth) = (now, Instant::now());
        }
    }
    last_growth
}

/// Runs the workload in `dir` while vexevent watches `watch` with default settings.
fn traced_run(watch: &Path, dir: &Path, workload: Workload, ops: u64, pace: Option<Duration>) -> Traced {
    let vexevent = Vexevent::start(&[watch], &[]);
    let cpu_before = cpu_time(vexevent.pid());
    let started = Instant::now();
    let rate = run_workload(workload, dir, ops, pace);
    let drain_end = drained(&vexevent.output);
    let elapsed = drain_end.duration_since(started);
    // Sampled after the quiet period: it adds only idle time.
    let cpu = cpu_time(vexevent.pid()).saturating_sub(cpu_before);
    let finished = vexevent.stop();
    let pid = u64::from(std::process::id());
    // The workload's operations (FUSE requests no syscall claimed, such as releases, come on top).
    let delivered = finished
        .events
        .iter()
        .filter(|e| {
            e["process"]["pid"].as_u64() == Some(pid)
                && !e["event_subtype"].as_str().is_some_and(|s| s.starts_with("FUSE_"))
        })
        .count() as u64;
    let summary = &finished.stats["loss"];
    let lost = ["lost_reported", "unaccounted"]
        .iter()
        .map(|field| summary[field].as_u64().unwrap_or(u64::MAX))
        .fold(0u64, u64::saturating_add);
    Traced { rate, delivered, lost, cpu, elapsed, stats: finished.stats }
}

/// A peer tool that prints every open of this process: its command line, and the text its
/// output contains once it is attached.
struct Peer {
    name: &'static str,
    args: Vec<String>,
    ready_marker: &'static str,
}

fn peers() -> Vec<Peer> {
    let pid = std::process::id();
    vec![
        Peer {
            name: "bpftrace",
            args: vec![
                "-e".into(),
                format!(
                    "tracepoint:syscalls:sys_enter_openat /pid == {pid}/ {{ printf(\"%s\\n\", str(args->filename)); }}"
                ),
            ],
            ready_marker: "Attaching",
        },
        // libbpf-tools opensnoop: prints a header once its probes are attached.
        Peer { name: "opensnoop", args: vec!["-p".into(), pid.to_string()], ready_marker: "PID" },
    ]
}

/// The open/close loop while `peer` prints every open to a file; None when it is not installed.
fn peer_run(peer: &Peer, mount: &Mount, ops: u64) -> Option<f64> {
    let program = which(peer.name)?;
    let out: PathBuf = mount.path.join(format!("{}.out", peer.name));
    let mut child = Command::new(program)
        .args(&peer.args)
        .stdout(std::fs::File::create(&out).ok()?)
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_mins(1);
    while !std::fs::read_to_string(&out).is_ok_and(|t| t.contains(peer.ready_marker)) {
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rate = run_workload(Workload::OpenClose, &mount.path, ops, None);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(libc::pid_t::try_from(child.id()).ok()?, libc::SIGINT) };
    let _ = child.wait();
    Some(rate)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `median (min-max)` of the rounds.
fn spread(values: &[f64], precision: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.precision$} ({min:.precision$}-{max:.precision$})", median(values.to_vec()))
}

fn latency(stats: &Value) -> String {
    format!("{}/{}", stats["latency"]["p50_us"], stats["latency"]["p99_us"])
}

/// Runs each workload `rounds` times, untraced and traced, printing a row per round and the
/// spread; returns the losses of open-close and mixed (which must lose nothing at defaults).
fn workload_table(watch: &Path, runs: &[(&str, Workload, PathBuf, u64)], rounds: u64) -> Vec<String> {
    let mut lossy = Vec::new();
    for &(name, workload, ref dir, ops) in runs {
        let (mut ratios, mut rates, mut costs) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            // Alternate which runs first, so neither always gets the warmer (or quieter) turn.
            let untraced_first = round % 2 == 1;
            let mut untraced = if untraced_first { run_workload(workload, dir, ops, None) } else { 0.0 };
            let traced = traced_run(watch, dir, workload, ops, None);
            if !untraced_first {
                untraced = run_workload(workload, dir, ops, None);
            }
            let ratio = traced.rate / untraced;
            ratios.push(ratio);
            let performed = ops * workload.events_per_iteration() * workload.threads();
            #[expect(clippy::cast_precision_loss, reason = "rates and costs")]
            let (events_per_sec, ns_per_event) = (
                traced.delivered as f64 / traced.elapsed.as_secs_f64(),
                traced.cpu.as_secs_f64() * 1e9 / traced.delivered.max(1) as f64,
            );
            rates.push(events_per_sec);
            costs.push(ns_per_event);
            println!(
                "{name:<11} {round:>5} {untraced:>13.0} {:>13.0} {ratio:>6.2} {:>24} {:>6} {events_per_sec:>11.0} {:>8.2}s {ns_per_event:>9.0} {:>16}",
                traced.rate,
                format!("{}/{performed}", traced.delivered),
                traced.lost,
                traced.cpu.as_secs_f64(),
                latency(&traced.stats),
            );
            if (traced.lost > 0 || traced.delivered < performed) && matches!(name, "open-close" | "mixed") {
                lossy.push(format!("{name} round {round}: {}/{performed} delivered", traced.delivered));
            }
        }
        println!(
            "{name:<11} median (min-max): ratio {}x, events/s {}, vexevent CPU per delivered event {} ns",
            spread(&ratios, 2),
            spread(&rates, 0),
            spread(&costs, 0)
        );
    }
    lossy
}

fn main() {
    if !root_or_skip("capture_overhead") {
        return;
    }
    let ops = env_or("VEXEVENT_BENCH_OPS", 200_000);
    let rounds = env_or("VEXEVENT_BENCH_ROUNDS", 3);
    let mount = Mount::tmpfs();
    for thread in 0..Workload::Threads.threads() {
        std::fs::write(mount.path.join(format!("target-{thread}")), b"x").expect("workload file");
    }
    // Warm up caches and the CPU frequency once.
    run_workload(Workload::OpenClose, &mount.path, ops / 4, None);

    println!(
        "capture_overhead: {ops} iterations per thread per run, {rounds} rounds, tmpfs, JSON Lines to disk"
    );
    println!(
        "{:<11} {:>5} {:>13} {:>13} {:>6} {:>24} {:>6} {:>11} {:>9} {:>9} {:>16}",
        "workload",
        "round",
        "untraced it/s",
        "traced it/s",
        "ratio",
        "delivered/performed",
        "lost",
        "events/s",
        "cpu",
        "ns/event",
        "p50/p99 us"
    );
    // The mixed workload also runs on a FUSE file system (Debian's bindfs) inside the watch:
    // every operation crosses into the daemon, and vexevent joins the FUSE requests to it.
    let bindfs = Bindfs::mount(&mount.path);
    let runs = [
        ("open-close", Workload::OpenClose, mount.path.clone(), ops),
        ("mixed", Workload::Mixed, mount.path.clone(), ops),
        ("threads", Workload::Threads, mount.path.clone(), ops),
        ("fuse-mixed", Workload::Mixed, bindfs.mount_point.clone(), ops / 10),
    ];
    let lossy = workload_table(&mount.path, &runs, rounds);

    // What the hooks alone cost: attached, every syscall filtered at entry.
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        let untraced = run_workload(Workload::OpenClose, &mount.path, ops, None);
        let vexevent = Vexevent::start(&[&mount.path], &["--pid", "1"]);
        let hooked = run_workload(Workload::OpenClose, &mount.path, ops, None);
        vexevent.stop();
        ratios.push(hooked / untraced);
    }
    println!(
        "hooks-only  median ratio, probes attached but filtering everything at entry: {:.2}x",
        median(ratios)
    );

    // Latency at a steady 100,000 events/s (50,000 open+close per second).
    let paced_ops = 100_000;
    let traced =
        traced_run(&mount.path, &mount.path, Workload::OpenClose, paced_ops, Some(Duration::from_micros(20)));
    println!(
        "paced       100000 events/s for {:.1}s: delivered {}/{} lost {} latency p50/p99/max {}/{}/{} us",
        traced.elapsed.as_secs_f64(),
        traced.delivered,
        paced_ops * 2,
        traced.lost,
        traced.stats["latency"]["p50_us"],
        traced.stats["latency"]["p99_us"],
        traced.stats["latency"]["max_us"],
    );

    for peer in peers() {
        match peer_run(&peer, &mount, ops) {
            Some(rate) => {
                let untraced = run_workload(Workload::OpenClose, &mount.path, ops, None);
                println!("{:<11} open-close printing every open: ratio {:.2}x", peer.name, rate / untraced);
            }
            None => println!("{:<11} not installed (or did not attach): comparison skipped", peer.name),
        }
    }

    if !lossy.is_empty() {
        eprintln!("capture_overhead: events lost with default settings: {}", lossy.join("; "));
        std::process::exit(1);
    }
}
