//! End-to-end capture overhead: a tight open/close loop on a watched tmpfs, run untraced and
//! traced (every open and close delivered as JSON Lines to a file on disk) side by side in
//! alternating rounds, reporting the slowdown ratio, events delivered vs performed, loss, and the
//! CPU vexevent used. A third run per round attaches the probes but filters everything at
//! syscall entry, to show what the hooks alone cost. Needs root. Run: `cargo bench --bench capture_overhead` (or
//! `cargo xtask bench`). Environment: `VEXEVENT_BENCH_OPS` (default 200000), `VEXEVENT_BENCH_ROUNDS`
//! (default 3).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::Path,
    time::{Duration, Instant},
};

use support::{Mount, Vexevent, root_or_skip};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Opens and closes `path` `ops` times; returns opens per second.
fn open_close_loop(path: &Path, ops: u64) -> f64 {
    let path = CString::new(path.as_os_str().as_bytes()).expect("path");
    let start = Instant::now();
    for _ in 0..ops {
        // SAFETY: a valid NUL-terminated path; the fd is closed right away.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            assert!(fd >= 0, "open failed");
            libc::close(fd);
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "a rate needs no more than 52 bits")]
    let ops = ops as f64;
    ops / start.elapsed().as_secs_f64()
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

struct TracedRound {
    rate: f64,
    delivered: u64,
    lost: u64,
    cpu: Duration,
}

fn traced_round(mount: &Mount, file: &Path, ops: u64) -> TracedRound {
    let vexevent = Vexevent::start(&[&mount.path], &["--ops", "open,close"]);
    let cpu_before = cpu_time(vexevent.pid());
    let rate = open_close_loop(file, ops);
    let cpu = cpu_time(vexevent.pid()).saturating_sub(cpu_before);
    let finished = vexevent.stop();
    let pid = u64::from(std::process::id());
    let delivered =
        finished.events.iter().filter(|e| e["process"]["pid"].as_u64() == Some(pid)).count() as u64;
    let summary = &finished.stats["loss"];
    let lost = ["lost_reported", "unaccounted"]
        .iter()
        .map(|field| summary[field].as_u64().unwrap_or(u64::MAX))
        .fold(0u64, u64::saturating_add);
    TracedRound { rate, delivered, lost, cpu }
}

/// The workload with the probes attached but every syscall filtered at enter (`--pid 1`): the
/// floor that the hooks alone cost.
fn hooks_only_round(mount: &Mount, file: &Path, ops: u64) -> f64 {
    let vexevent = Vexevent::start(&[&mount.path], &["--pid", "1"]);
    let rate = open_close_loop(file, ops);
    vexevent.stop();
    rate
}

fn main() {
    if !root_or_skip("capture_overhead") {
        return;
    }
    let ops = env_or("VEXEVENT_BENCH_OPS", 200_000);
    let rounds = env_or("VEXEVENT_BENCH_ROUNDS", 3);
    let mount = Mount::tmpfs();
    let file = mount.path.join("target");
    std::fs::write(&file, b"x").expect("workload file");
    // Warm up caches and the CPU frequency once.
    open_close_loop(&file, ops / 4);

    println!("capture_overhead: tight open+close loop, {ops} iterations per run, {rounds} rounds");
    println!(
        "{:<6} {:>14} {:>16} {:>14} {:>7} {:>22} {:>6} {:>14}",
        "round",
        "untraced op/s",
        "hooks-only op/s",
        "traced op/s",
        "ratio",
        "events delivered",
        "lost",
        "vexevent CPU"
    );
    let mut ratios = Vec::new();
    let mut all_delivered = true;
    for round in 1..=rounds {
        let untraced = open_close_loop(&file, ops);
        let hooks_only = hooks_only_round(&mount, &file, ops);
        let traced = traced_round(&mount, &file, ops);
        let ratio = traced.rate / untraced;
        ratios.push(ratio);
        let performed = 2 * ops;
        all_delivered &= traced.delivered == performed && traced.lost == 0;
        println!(
            "{round:<6} {untraced:>14.0} {hooks_only:>16.0} {:>14.0} {ratio:>7.2} {:>22} {:>6} {:>13.2}s",
            traced.rate,
            format!("{}/{performed}", traced.delivered),
            traced.lost,
            traced.cpu.as_secs_f64()
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("median slowdown ratio (traced/untraced): {median:.2}x; every event delivered: {all_delivered}");
}
