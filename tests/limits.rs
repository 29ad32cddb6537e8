//! Root tests of capture at its limits: a deliberately small ring overloaded by a tight loop must
//! account for every record exactly (delivered + reported lost == performed, per operation type),
//! and so must a consumer paused (SIGSTOP) while the loop runs, which then resumes capturing;
//! events from different CPUs must come out in kernel-timestamp order, so that per-file
//! causality (create before write before rename) holds even when the writer hops between CPUs.
//! More watched open files than the kernel's scope table holds are counted (`scope_full`), and
//! the table has room again once they are closed. A tight loop at default settings is drained
//! on the consumer's timer: every event delivered, and the probes woke the consumer only when it
//! slept (not once per batch).

mod support;

use std::{collections::BTreeMap, ffi::CString, os::unix::ffi::OsStrExt, time::Duration};

use support::{Mount, Vexevent, event_path_bytes, exclusive_root_test, has_path_bytes};

fn open_close(path: &CString, times: u64) {
    for _ in 0..times {
        // SAFETY: a valid path; the fd is closed at once.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
            assert!(fd >= 0, "open failed");
            libc::close(fd);
        }
    }
}

#[test]
fn overload_is_accounted_exactly_per_operation_type() {
    const PERFORMED: u64 = 20_000;
    let Some(_serial) = exclusive_root_test("overload_is_accounted_exactly_per_operation_type") else {
        return;
    };
    let mount = Mount::tmpfs();
    let file = mount.path.join("hot");
    std::fs::write(&file, b"x").unwrap();
    // One page of ring per CPU and a long batch window: the loop overruns it many times over.
    let vexevent = Vexevent::start(
        &[&mount.path],
        &["--ops", "open,close", "--ring-bytes", "4096", "--batch-window-us", "20000"],
    );
    open_close(&CString::new(file.as_os_str().as_bytes()).unwrap(), PERFORMED);
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);

    let lost = assert_accounted(&finished, PERFORMED);
    assert!(lost > 0, "the ring was meant to overflow: {}", finished.stats);
}

#[test]
fn a_tight_loop_is_drained_on_the_consumers_timer_not_by_a_wakeup_per_batch() {
    const PERFORMED: u64 = 20_000;
    let Some(_serial) =
        exclusive_root_test("a_tight_loop_is_drained_on_the_consumers_timer_not_by_a_wakeup_per_batch")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let file = mount.path.join("hot");
    std::fs::write(&file, b"x").unwrap();
    let vexevent = Vexevent::start(&[&mount.path], &[]);
    open_close(&CString::new(file.as_os_str().as_bytes()).unwrap(), PERFORMED);
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let lost = assert_accounted(&finished, PERFORMED);
    assert_eq!(lost, 0, "default settings keep up with one tight loop: {}", finished.stats);
    // The consumer slept before the loop, so its first record woke it; from then on it drained on
    // its timer, and slept (to be woken again) only when the loop was descheduled for 2 ms. A
    // wakeup per batch (one per batch window: 100 us) would be hundreds to thousands.
    let wakeups = finished.stats["userspace"]["drainer_wakeups"].as_u64().unwrap();
    eprintln!("tight loop: {} records, {wakeups} drainer wakeups", 2 * PERFORMED);
    assert!(wakeups >= 1, "the probes woke the sleeping consumer: {}", finished.stats);
    assert!(
        wakeups <= PERFORMED / 20,
        "woken {wakeups} times for {} records: {}",
        2 * PERFORMED,
        finished.stats
    );
}

/// Asserts that this process's opens and closes were each delivered or reported lost, exactly
/// `performed` of each, with nothing unaccounted; returns how many were lost.
fn assert_accounted(finished: &support::Finished, performed: u64) -> u64 {
    let pid = u64::from(std::process::id());
    let mut delivered: BTreeMap<&str, u64> = BTreeMap::new();
    let mut reported: BTreeMap<String, u64> = BTreeMap::new();
    for event in &finished.events {
        if let Some(gap) = event["context"].get("gap") {
            assert_eq!(event["event_type"], "ObservabilityAlertTriggered");
            let mut sum = 0;
            for (op, n) in gap["lost_by_operation"].as_object().unwrap() {
                *reported.entry(op.clone()).or_default() += n.as_u64().unwrap();
                sum += n.as_u64().unwrap();
            }
            assert_eq!(gap["count"].as_u64(), Some(sum), "a gap's counts add up: {event}");
        } else if event["process"]["pid"].as_u64() == Some(pid) {
            let op = if event["event_subtype"] == "close" { "close" } else { "open" };
            *delivered.entry(op).or_default() += 1;
        }
    }
    let stats = &finished.stats;
    let lost: u64 = reported.values().sum();
    for op in ["open", "close"] {
        let total = delivered.get(op).copied().unwrap_or(0) + reported.get(op).copied().unwrap_or(0);
        assert_eq!(total, performed, "{op}: delivered {delivered:?} + reported lost {reported:?}");
    }
    assert_eq!(stats["loss"]["unaccounted"], 0, "{stats}");
    assert_eq!(stats["loss"]["lost_reported"].as_u64(), Some(lost), "{stats}");
    assert_eq!(stats["userspace"]["records_missing"], 0, "every gap came with a gap record: {stats}");
    assert_eq!(stats["kernel"]["lost_ring_full"].as_u64(), Some(lost), "{stats}");
    lost
}

#[test]
fn a_consumer_paused_while_the_workload_runs_reports_its_losses_exactly_and_resumes() {
    const PERFORMED: u64 = 20_000;
    let Some(_serial) = exclusive_root_test(
        "a_consumer_paused_while_the_workload_runs_reports_its_losses_exactly_and_resumes",
    ) else {
        return;
    };
    let mount = Mount::tmpfs();
    let file = mount.path.join("hot");
    std::fs::write(&file, b"x").unwrap();
    // 64 KiB rings: far fewer records than the loop makes while the consumer is stopped.
    let vexevent = Vexevent::start(&[&mount.path], &["--ops", "open,close", "--ring-bytes", "65536"]);
    vexevent.signal(libc::SIGSTOP);
    open_close(&CString::new(file.as_os_str().as_bytes()).unwrap(), PERFORMED);
    vexevent.signal(libc::SIGCONT);
    // Capture goes on once resumed: when the consumer has drained what the rings kept, an open
    // (by another process: this one's are counted) is delivered. (What was lost is reported with
    // the next record of the same CPU, or at the end.)
    vexevent.wait_until_drained(Duration::from_secs(30));
    let marker = mount.path.join("after-the-pause");
    assert!(std::process::Command::new("touch").arg(&marker).status().unwrap().success());
    let marker_bytes = marker.as_os_str().as_bytes().to_vec();
    vexevent.wait_for("the open after the pause", Duration::from_secs(30), |events| {
        events.iter().any(|e| has_path_bytes(e, &marker_bytes))
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let lost = assert_accounted(&finished, PERFORMED);
    eprintln!("paused consumer: {lost} of {} records lost and reported", 2 * PERFORMED);
    assert!(lost > 0, "the rings were meant to overflow during the pause: {}", finished.stats);
}

/// Pins the calling thread to one CPU.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set), 0);
    }
}

#[test]
fn merged_order_keeps_per_file_causality_across_cpus() {
    const FILES: usize = 300;
    let Some(_serial) = exclusive_root_test("merged_order_keeps_per_file_causality_across_cpus") else {
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if cpus < 2 {
        eprintln!("SKIP merged_order_keeps_per_file_causality_across_cpus: needs 2 CPUs, have {cpus}");
        return;
    }
    let mount = Mount::tmpfs();
    let vexevent = Vexevent::start(&[&mount.path], &["--ops", "open,write,rename"]);
    // A thread of its own, so that pinning does not affect the test harness.
    let root = mount.path.clone();
    std::thread::spawn(move || {
        for i in 0..FILES {
            let path = root.join(format!("f{i}"));
            pin_to(i % 2);
            std::fs::File::create(&path).unwrap();
            pin_to((i + 1) % 2);
            // Opened without O_CREAT: only the File::create above is a creation.
            std::io::Write::write_all(
                &mut std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
                b"data",
            )
            .unwrap();
            pin_to(i % 2);
            std::fs::rename(&path, root.join(format!("g{i}"))).unwrap();
        }
    })
    .join()
    .unwrap();
    let last = mount.path.join(format!("f{}", FILES - 1));
    let last = last.as_os_str().as_bytes().to_vec();
    vexevent.wait_for("the last rename", Duration::from_secs(30), |events| {
        events.iter().any(|e| e["event_type"] == "FilesystemRename" && has_path_bytes(e, &last))
    });
    let finished = vexevent.stop();
    // Per file: the create, then the write, then the rename, in stream order.
    let mut steps: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    let mut cpus_seen = std::collections::BTreeSet::new();
    for event in &finished.events {
        let Some(path) = event_path_bytes(&event["context"]["filesystem"]["path"]) else { continue };
        let step = match (event["event_type"].as_str().unwrap(), event["event_subtype"].as_str().unwrap()) {
            ("FilesystemCreate", _) => "create",
            ("FilesystemWrite", "write") => "write",
            ("FilesystemRename", _) => "rename",
            _ => continue,
        };
        cpus_seen.insert(event["timestamp"]["cpu"].as_u64().unwrap());
        steps.entry(path).or_default().push(step.to_owned());
    }
    assert_eq!(steps.len(), FILES, "one history per file");
    for (path, history) in &steps {
        assert_eq!(history, &["create", "write", "rename"], "{}", String::from_utf8_lossy(path));
    }
    assert!(cpus_seen.len() >= 2, "the writer ran on both CPUs: {cpus_seen:?}");
    assert_eq!(finished.stats["userspace"]["records_late"], 0, "{}", finished.stats);
    let timestamps: Vec<u64> =
        finished.events.iter().map(|e| e["timestamp"]["monotonic_ns"].as_u64().unwrap()).collect();
    assert!(timestamps.windows(2).all(|w| w[0] <= w[1]), "the stream is in timestamp order");
}

/// Opens a file `total` times, all open at once (each open is an open file of its own), spread
/// over as many processes as the descriptor limit asks, then closes them all.
const MANY_OPEN_FILES: &str = r#"
import os, resource, sys
path, total = sys.argv[1], int(sys.argv[2])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
if hard == resource.RLIM_INFINITY or hard > 1 << 20:
    hard = 1 << 20
each = hard - 64
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
procs = -(-total // each)
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
children = []
for _ in range(procs):
    pid = os.fork()
    if pid == 0:
        fds = [os.open(path, os.O_RDONLY) for _ in range(min(each, total - len(children) * each))]
        os.write(ready_w, b"r")
        os.read(go_r, 1)
        for fd in fds:
            os.close(fd)
        os._exit(0)
    children.append(pid)
for _ in range(procs):
    os.read(ready_r, 1)
os.write(go_w, b"g" * procs)
for pid in children:
    assert os.waitpid(pid, 0)[1] == 0
"#;

#[test]
fn open_files_past_the_scope_table_are_counted_and_its_room_comes_back() {
    let Some(_serial) =
        exclusive_root_test("open_files_past_the_scope_table_are_counted_and_its_room_comes_back")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let file = mount.path.join("opened-many-times");
    std::fs::write(&file, b"x").unwrap();
    // Only writes reported: the opens and closes are traced all the same, since they keep the
    // table (a close frees its entry).
    let vexevent = Vexevent::start(&[&mount.path], &["--ops", "write"]);
    // The kernel's table of watched open files holds 2^17 = 131,072: 144,000 stay open at once.
    let opened = 144_000u64;
    let status = std::process::Command::new("python3")
        .args(["-c", MANY_OPEN_FILES])
        .arg(&file)
        .arg(opened.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "the opener failed");
    // Closed again: once the consumer has caught up (288,000 opens and closes can overflow the
    // rings on a loaded machine; that loss is reported), a new watched file is followed, and its
    // write reported.
    vexevent.wait_until_drained(Duration::from_mins(2));
    let after = mount.path.join("after");
    std::fs::write(&after, b"written").unwrap();
    vexevent.wait_for("the write after the table emptied", Duration::from_secs(30), |events| {
        events
            .iter()
            .any(|e| e["event_type"] == "FilesystemWrite" && has_path_bytes(e, after.as_os_str().as_bytes()))
    });
    let finished = vexevent.stop();
    let full = finished.stats["kernel"]["scope_full"].as_u64().unwrap();
    assert!((10_000..=opened).contains(&full), "scope_full {full} of {opened} opens: {}", finished.stats);
}
