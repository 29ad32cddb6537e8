//! Root tests of the `react` stage with real processes: a process renaming 300 files to
//! `*.locked` is stopped (SIGSTOP through a pidfd) and resumed by a rollback through the control
//! API (refused without the token, and a second time by `vexevent rollback`), with the audit log
//! verified and the same detections replayed from the recorded log (every rollback is an audit
//! event in the stream); actions with `rollback_after_ms` (SIGSTOP, chmod) are undone by
//! themselves; a sequence rule on a bindfs FUSE mount and on tmpfs detects temporary files
//! renamed over others (and prints its detection latency); rules replaced by a reload
//! stop detecting and the new ones start; `dry_run` acts on
//! nothing and audits what it would have done; an absence fires (a chmod and a program run as
//! `nobody`), and after an induced ring overflow reports `gapped` and does not act; what a
//! program run by a rule does triggers no rule (no feedback loop). Without root: `check-config`
//! shows `react` before `filter` and lists rule problems with their place.

mod support;

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::MetadataExt, fs::PermissionsExt},
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Bindfs, Mount, Vexevent, exclusive_root_test};

const DEADLINE: Duration = Duration::from_secs(30);

fn detections<'a>(events: &'a [Value], rule: &str) -> Vec<&'a Value> {
    let subtype = format!("rule:{rule}");
    events.iter().filter(|e| e["event_subtype"] == subtype.as_str()).collect()
}

fn audits<'a>(events: &'a [Value], outcome: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["event_type"] == "ObservabilityAuditEvent" && e["context"]["parameters"]["outcome"] == outcome
        })
        .collect()
}

/// The audit events among `events` whose `record` is `record`.
fn records<'a>(events: &[&'a Value], record: &str) -> Vec<&'a Value> {
    events.iter().copied().filter(|e| e["context"]["parameters"]["record"] == record).collect()
}

/// The rollbacks' audit events.
fn rollbacks(events: &[Value]) -> Vec<&Value> {
    let audit: Vec<&Value> = events.iter().filter(|e| e["event_type"] == "ObservabilityAuditEvent").collect();
    records(&audit, "rollback")
}

/// The process's state letter (`T` when stopped), from /proc/PID/status.
fn state(pid: u32) -> char {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("State:")).unwrap();
    line.split_whitespace().nth(1).unwrap().chars().next().unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process that renames `dir`'s 300 files to `*.locked` as fast as it can, then waits.
fn locker(dir: &Path) -> Child {
    for i in 0..300 {
        std::fs::write(dir.join(format!("f{i}")), b"data").unwrap();
    }
    Command::new("perl")
        .arg("-e")
        .arg("my $d = shift; rename(\"$d/f$_\", \"$d/f$_.locked\") for 0..299; sleep 60;")
        .arg(dir)
        .spawn()
        .expect("perl")
}

/// POSTs to the control API with `token`: the status and body.
fn post(url: &str, token: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .send("")
        .expect("the control API answers");
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

fn vexevent_command(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vexevent")).args(args).output().unwrap()
}

/// The shared rules (tests/fixtures/rules, also used by the unit tests and the bench).
const LOCKER: &str = include_str!("fixtures/rules/locker.toml");
const REPLACE_OVER: &str = include_str!("fixtures/rules/replace-over.toml");
const INDEX_UPKEEP: &str = include_str!("fixtures/rules/index-upkeep.toml");

/// The `locker` rule (200 renames to `*.locked` by one pid within 1 s) with `actions`.
fn rules(actions: &str) -> String {
    format!("{LOCKER}actions = [{actions}]\n")
}

fn config(dir: &Path, mode: &str, rules_file: &Path) -> std::path::PathBuf {
    let path = dir.join("vexevent.toml");
    std::fs::write(
        &path,
        format!(
            "[react]\nmode = \"{mode}\"\nrules_file = \"{}\"\naudit_log = \"{}\"\nquarantine_dir = \"{}\"\n",
            rules_file.display(),
            dir.join("audit.log").display(),
            dir.join("quarantine").display()
        ),
    )
    .unwrap();
    path
}

/// (rule, key, verdict, linked ids) of each detection, in order.
fn summary(detections: &[&Value]) -> Vec<(String, String, String, Vec<u64>)> {
    detections
        .iter()
        .map(|d| {
            let p = &d["context"]["parameters"];
            let links =
                d["causality_links"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            (p["rule"].to_string(), p["key"].to_string(), p["verdict"].to_string(), links)
        })
        .collect()
}

#[test]
fn a_mass_renaming_process_is_stopped_resumed_on_rollback_audited_and_replayed() {
    let Some(_serial) =
        exclusive_root_test("a_mass_renaming_process_is_stopped_resumed_on_rollback_audited_and_replayed")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.toml");
    std::fs::write(&rules_file, rules(r#"{ type = "signal", signal = "SIGSTOP", max_per_minute = 1 }"#))
        .unwrap();
    let config = config(dir.path(), "enforce", &rules_file);
    let vexevent = Vexevent::start(
        &[&mount.path],
        &["--config", config.to_str().unwrap(), "--control-addr", "127.0.0.1:0"],
    );
    let control = vexevent.served_address("http://");
    let mut child = locker(&mount.path);
    let pid = child.id();
    wait_until("the locker to be stopped (state T)", || state(pid) == 'T');

    let audit_log = dir.path().join("audit.log");
    let verified = vexevent_command(&["audit", "verify", audit_log.to_str().unwrap()]);
    assert!(verified.status.success(), "{verified:?}");
    let log = std::fs::read_to_string(&audit_log).unwrap();
    let outcome: Value =
        serde_json::from_str(log.lines().find(|l| l.contains("\"record\":\"outcome\"")).unwrap()).unwrap();
    assert_eq!(outcome["outcome"], "done", "{log}");
    assert_eq!(outcome["undo"]["pid"].as_u64(), Some(u64::from(pid)));
    let seq = outcome["seq"].to_string();
    let url = format!("http://{control}/api/v1/control/rollback/{seq}");
    assert_eq!(post(&url, "wrong").0, 401, "the control API's token is needed");
    assert_eq!(state(pid), 'T', "nothing was rolled back without it");
    let (code, body) = post(&url, &vexevent.token());
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("pid {pid} resumed")), "{body}");
    wait_until("the locker to run again", || state(pid) != 'T');
    let rolls_back = seq.clone();
    vexevent.wait_for("the rollback's audit event", DEADLINE, move |events| {
        rollbacks(events).iter().any(|e| e["context"]["parameters"]["rolls_back"] == rolls_back.as_str())
    });
    let again = vexevent_command(&["rollback", "--audit-log", audit_log.to_str().unwrap(), &seq]);
    assert!(!again.status.success(), "a rollback is done once");
    let verified = vexevent_command(&["audit", "verify", audit_log.to_str().unwrap()]);
    assert!(verified.status.success(), "{verified:?}");
    assert!(std::fs::read_to_string(&audit_log).unwrap().contains("\"record\":\"rollback\""));
    child.kill().unwrap();
    child.wait().unwrap();

    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let found = detections(&finished.events, "locker");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["event_type"], "ObservabilityAlertTriggered");
    assert_eq!(found[0]["process"]["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(found[0]["context"]["parameters"]["verdict"], "complete");
    assert_eq!(found[0]["causality_links"].as_array().unwrap().len(), 64, "the first 64 renames are linked");
    let done = audits(&finished.events, "done");
    assert_eq!(records(&done, "outcome").len(), 1, "the stop is an audit event in the stream");
    let rolled = rollbacks(&finished.events);
    assert_eq!(rolled.len(), 1, "the rollback through the control API is one too: {rolled:?}");
    assert_eq!(rolled[0]["process"]["pid"].as_u64(), Some(u64::from(pid)), "derived from the detection");
    let stats = &finished.stats;
    assert_eq!(stats["rules"]["locker"]["detections"], 1, "{stats}");
    assert_eq!(stats["rules"]["locker"]["actions"]["done"], 1, "{stats}");
    assert_eq!(stats["rules"]["locker"]["actions"]["rolled_back"], 1, "{stats}");
    assert_eq!(stats["audit_head"]["seq"], 3, "decision, outcome and rollback lines: {stats}");

    // The same log, replayed, gives the same detections.
    let recorded = dir.path().join("recorded.jsonl");
    let lines: Vec<String> = finished.events.iter().map(Value::to_string).collect();
    std::fs::write(&recorded, lines.join("\n") + "\n").unwrap();
    let replayed =
        vexevent_command(&["replay", "--rules", rules_file.to_str().unwrap(), recorded.to_str().unwrap()]);
    assert!(replayed.status.success(), "{replayed:?}");
    let replayed: Vec<Value> = String::from_utf8(replayed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(summary(&replayed.iter().collect::<Vec<_>>()), summary(&found));
}

#[test]
fn a_dry_run_acts_on_nothing_and_audits_what_it_would_have_done() {
    let Some(_serial) = exclusive_root_test("a_dry_run_acts_on_nothing_and_audits_what_it_would_have_done")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.toml");
    let actions =
        r#"{ type = "signal", signal = "SIGKILL", dry_run = true }, { type = "quarantine", dry_run = true }"#;
    std::fs::write(&rules_file, rules(actions)).unwrap();
    let config = config(dir.path(), "enforce", &rules_file);
    let vexevent = Vexevent::start(&[&mount.path], &["--config", config.to_str().unwrap()]);
    let mut child = locker(&mount.path);
    vexevent.wait_for("two dry-run audit events", DEADLINE, |events| audits(events, "dry_run").len() == 2);
    assert!(matches!(child.try_wait(), Ok(None)), "the locker was not killed");
    assert_ne!(state(child.id()), 'T');
    for i in 0..300 {
        assert!(mount.path.join(format!("f{i}.locked")).exists(), "f{i}.locked stayed in place");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let details: Vec<&str> = audits(&finished.events, "dry_run")
        .iter()
        .map(|e| e["context"]["parameters"]["detail"].as_str().unwrap())
        .collect();
    assert!(details[0].starts_with("send SIGKILL to pid"), "{details:?}");
    assert!(details[1].starts_with("move ") && details[1].ends_with(".locked to quarantine"), "{details:?}");
    let log = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert_eq!(log.lines().count(), 2, "two decisions, no outcome: {log}");
    assert!(!dir.path().join("quarantine").exists());
}

/// Opens and closes `path` `times` times (a flood of records).
#[test]
fn actions_that_ask_for_it_are_rolled_back_automatically_each_rollback_an_event() {
    let Some(_serial) =
        exclusive_root_test("actions_that_ask_for_it_are_rolled_back_automatically_each_rollback_an_event")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.toml");
    std::fs::write(
        &rules_file,
        rules(
            r#"{ type = "signal", signal = "SIGSTOP", rollback_after_ms = 1500 },
            { type = "chmod", mode = 0o000, rollback_after_ms = 1500 }"#,
        ),
    )
    .unwrap();
    let config = config(dir.path(), "enforce", &rules_file);
    let vexevent = Vexevent::start(&[&mount.path], &["--config", config.to_str().unwrap()]);
    let mut child = locker(&mount.path);
    let pid = child.id();
    wait_until("the locker to be stopped (state T)", || state(pid) == 'T');
    let audit_log = dir.path().join("audit.log");
    let outcomes = || -> Vec<Value> {
        std::fs::read_to_string(&audit_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["record"] == "outcome")
            .collect()
    };
    wait_until("both actions' outcomes", || outcomes().len() == 2);
    let chmod = outcomes().into_iter().find(|l| l["action"] == "chmod").unwrap();
    assert_eq!(chmod["outcome"], "done", "{chmod}");
    let file = std::path::PathBuf::from(chmod["target"].as_str().unwrap());
    assert!(file.to_str().unwrap().ends_with(".locked"), "the renamed file: {chmod}");
    // Undone by themselves: the process runs again, the mode is the old one.
    wait_until("the locker to be resumed automatically", || state(pid) != 'T');
    wait_until("the mode to be restored", || {
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777 == 0o644
    });
    vexevent.wait_for("both rollbacks' audit events", DEADLINE, |events| rollbacks(events).len() == 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let rolled = rollbacks(&finished.events);
    let mut seen: Vec<(String, String, String)> = rolled
        .iter()
        .map(|e| {
            let p = &e["context"]["parameters"];
            assert_eq!(e["process"]["pid"].as_u64(), Some(u64::from(pid)), "derived from the detection: {e}");
            (
                e["event_subtype"].as_str().unwrap().to_owned(),
                p["outcome"].to_string(),
                p["rolls_back"].to_string(),
            )
        })
        .collect();
    seen.sort();
    let seq_of = |action: &str| {
        let line = outcomes().into_iter().find(|l| l["action"] == action).unwrap();
        format!("\"{}\"", line["seq"])
    };
    assert_eq!(
        seen,
        [
            ("action:chmod".to_owned(), "\"done\"".to_owned(), seq_of("chmod")),
            ("action:signal".to_owned(), "\"done\"".to_owned(), seq_of("signal")),
        ]
    );
    let verified = vexevent_command(&["audit", "verify", audit_log.to_str().unwrap()]);
    assert!(verified.status.success(), "{verified:?}");
    assert_eq!(finished.stats["rules"]["locker"]["actions"]["rolled_back"], 2, "{}", finished.stats);
    // A rollback already done is not done again by hand.
    let again = vexevent_command(&[
        "rollback",
        "--audit-log",
        audit_log.to_str().unwrap(),
        &seq_of("signal").replace('"', ""),
    ]);
    assert!(!again.status.success(), "a rollback is done once");
}

/// Temporary files renamed over others in the FUSE sequence test.
const PAIRS: usize = 200;

/// The `p`th percentile of sorted `values`.
fn percentile(values: &[u64], p: usize) -> u64 {
    values[(values.len() * p / 100).min(values.len() - 1)]
}

/// Runs the `replace-over` sequence rule while one process writes a temporary file in `root`
/// and renames it over an existing one, `PAIRS` times (vexevent watching `watched`); checks one
/// detection per pair, linking that pair's events (the renames served by a FUSE daemon when
/// `fuse`), and prints the detection latency (`what` names the run).
fn sequence_detections(what: &str, watched: &Path, root: &Path, fuse: bool) {
    for i in 0..PAIRS {
        std::fs::write(root.join(format!("target{i}")), b"old").unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.toml");
    std::fs::write(&rules_file, REPLACE_OVER).unwrap();
    let config = config(dir.path(), "monitor", &rules_file);
    let vexevent = Vexevent::start(&[watched], &["--config", config.to_str().unwrap()]);
    // One process: write a temporary file, rename it over an existing one, 200 times.
    let status = Command::new("perl")
        .arg("-e")
        .arg(
            "my ($d, $n) = @ARGV; for my $i (0..$n-1) { open(my $f, '>', \"$d/t$i.tmp\") or die; \
             print $f 'new'; close($f); rename(\"$d/t$i.tmp\", \"$d/target$i\") or die; }",
        )
        .arg(root)
        .arg(PAIRS.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    vexevent.wait_for("a detection per pair", DEADLINE, |events| {
        detections(events, "replace-over").len() >= PAIRS
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let by_id: std::collections::HashMap<u64, &Value> =
        finished.events.iter().map(|e| (e["event_id"].as_u64().unwrap(), e)).collect();
    let found = detections(&finished.events, "replace-over");
    assert_eq!(found.len(), PAIRS, "one detection per pair, no more");
    let mut latencies = Vec::new();
    for (i, detection) in found.iter().enumerate() {
        let links: Vec<u64> =
            detection["causality_links"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(links.len(), 2, "{detection}");
        let (create, rename) = (by_id[&links[0]], by_id[&links[1]]);
        let tmp = root.join(format!("t{i}.tmp"));
        assert!(support::path_is(create, &tmp) && create["event_type"] == "FilesystemCreate", "{create}");
        assert!(support::path_is(rename, &tmp) && rename["event_type"] == "FilesystemRename", "{rename}");
        if fuse {
            assert!(
                !rename["context"]["fuse"].as_array().unwrap().is_empty(),
                "served by the FUSE daemon: {rename}"
            );
        }
        assert_eq!(detection["process"]["pid"], rename["process"]["pid"]);
        assert_eq!(detection["context"]["parameters"]["verdict"], "complete");
        assert_eq!(detection["timestamp"]["monotonic_ns"], rename["timestamp"]["monotonic_ns"]);
        let latency = &detection["context"]["parameters"]["latency_ns"];
        latencies.push(latency.as_str().unwrap().parse::<u64>().unwrap());
    }
    latencies.sort_unstable();
    // Reported, not asserted (the machine is shared): the README quotes runs of these tests.
    let sink = &finished.stats["latency"];
    println!(
        "detection latency over {PAIRS} sequences on {what} (kernel timestamp of the rename to the \
         detection leaving the react stage): p50 {} us, p99 {} us, max {} us; every event's kernel \
         timestamp to its sink write: p50 {} us, p99 {} us, max {} us",
        percentile(&latencies, 50) / 1_000,
        percentile(&latencies, 99) / 1_000,
        latencies[latencies.len() - 1] / 1_000,
        sink["p50_us"],
        sink["p99_us"],
        sink["max_us"]
    );
}

#[test]
fn a_sequence_rule_detects_temporary_files_renamed_over_others_on_a_fuse_mount() {
    let Some(_serial) =
        exclusive_root_test("a_sequence_rule_detects_temporary_files_renamed_over_others_on_a_fuse_mount")
    else {
        return;
    };
    let watched = tempfile::tempdir().unwrap();
    let bindfs = Bindfs::mount(watched.path());
    sequence_detections("a bindfs FUSE mount", watched.path(), &bindfs.mount_point, true);
}

#[test]
fn a_sequence_rule_detects_temporary_files_renamed_over_others_on_tmpfs() {
    let Some(_serial) =
        exclusive_root_test("a_sequence_rule_detects_temporary_files_renamed_over_others_on_tmpfs")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    sequence_detections("tmpfs", &mount.path, &mount.path, false);
}

fn open_close(path: &Path, times: u64) {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    for _ in 0..times {
        // SAFETY: a valid C path; the descriptor is closed right away.
        unsafe { libc::close(libc::open(path.as_ptr(), libc::O_RDONLY)) };
    }
}

#[test]
fn an_absence_fires_and_acts_and_after_a_ring_overflow_reports_gapped_without_acting() {
    let Some(_serial) = exclusive_root_test(
        "an_absence_fires_and_acts_and_after_a_ring_overflow_reports_gapped_without_acting",
    ) else {
        return;
    };
    let mount = Mount::tmpfs();
    // Where the program (as nobody) can write: the mount's own parents are private.
    let shared = tempfile::tempdir_in("/tmp").unwrap();
    let open = shared.path();
    std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.toml");
    std::fs::write(
        &rules_file,
        format!(
            "{}actions = [{{ type = \"chmod\", mode = 0o600 }}, {{ type = \"run\", argv = [\"/usr/bin/touch\", \"{}\"] }}]\n",
            INDEX_UPKEEP.replace("within_ms = 1000", "within_ms = 1500"),
            open.join("ran").display()
        ),
    )
    .unwrap();
    let config = config(dir.path(), "enforce", &rules_file);
    // Rings small enough for the flood below to overflow, large enough for the few records
    // before it.
    let vexevent = Vexevent::start(
        &[&mount.path],
        &["--config", config.to_str().unwrap(), "--ring-bytes", "65536", "--batch-window-us", "2000"],
    );
    for name in ["a", "b", "c"] {
        std::fs::create_dir(mount.path.join(name)).unwrap();
    }
    // a: never rebuilt (fires); b: rebuilt in time (nothing).
    std::fs::write(mount.path.join("a/x.vec"), b"v").unwrap();
    std::fs::write(mount.path.join("b/y.vec"), b"v").unwrap();
    std::fs::write(mount.path.join("b/rebuilt"), b"").unwrap();
    vexevent.wait_for("the absence of a rebuild in a", DEADLINE, |events| {
        !detections(events, "index-upkeep").is_empty()
    });
    let audit_log = dir.path().join("audit.log");
    let end = Instant::now() + DEADLINE;
    while !open.join("ran").exists() {
        let log = std::fs::read_to_string(&audit_log).unwrap_or_default();
        assert!(Instant::now() < end, "the program never wrote its file; audit log:\n{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let owner = std::fs::metadata(open.join("ran")).unwrap().uid();
    assert_eq!(owner, 65_534, "the program ran as nobody");
    wait_until("the chmod", || {
        std::fs::metadata(mount.path.join("a/x.vec")).unwrap().permissions().mode() & 0o777 == 0o600
    });

    // c: written, then the ring overflows inside its window.
    std::fs::write(mount.path.join("c/z.vec"), b"v").unwrap();
    let z = mount.path.join("c/z.vec");
    vexevent.wait_for("c/z.vec's creation", DEADLINE, |events| {
        events.iter().any(|e| support::path_is(e, &z) && e["event_type"] == "FilesystemCreate")
    });
    let hot = mount.path.join("hot");
    std::fs::write(&hot, b"").unwrap();
    open_close(&hot, 20_000);
    vexevent.wait_for("the gapped absence in c", DEADLINE, |events| {
        detections(events, "index-upkeep").len() >= 2
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    assert!(finished.events.iter().any(|e| e["event_subtype"] == "records_lost"), "the ring overflowed");
    let found = detections(&finished.events, "index-upkeep");
    let verdicts: Vec<(&str, &str)> = found
        .iter()
        .map(|d| {
            let p = &d["context"]["parameters"];
            (p["key"].as_str().unwrap(), p["verdict"].as_str().unwrap())
        })
        .collect();
    let a = mount.path.join("a");
    let c = mount.path.join("c");
    assert_eq!(verdicts, [(a.to_str().unwrap(), "complete"), (c.to_str().unwrap(), "gapped")]);
    assert_eq!(
        std::fs::metadata(&z).unwrap().permissions().mode() & 0o777,
        0o644,
        "nothing acts on a gapped absence"
    );
    assert_eq!(audits(&finished.events, "not_acted_gapped").len(), 2, "both actions audited as not acted");
    let verified = vexevent_command(&["audit", "verify", dir.path().join("audit.log").to_str().unwrap()]);
    assert!(verified.status.success(), "{verified:?}");
}

#[test]
fn what_a_rules_program_does_triggers_no_rule() {
    let Some(_serial) = exclusive_root_test("what_a_rules_program_does_triggers_no_rule") else {
        return;
    };
    let mount = Mount::tmpfs();
    // The program runs as nobody: it must reach the mount and write in it.
    std::fs::set_permissions(mount.path.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&mount.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.toml");
    let by_program = mount.path.join("by-program");
    std::fs::write(
        &rules_file,
        format!(
            r#"
[[rules]]
name = "creates"
kind = "count"
match = "type == FilesystemCreate"
at_least = 1
within_ms = 1
key = "path"
actions = [{{ type = "run", argv = ["/usr/bin/touch", "{}"] }}]
"#,
            by_program.display()
        ),
    )
    .unwrap();
    let config = config(dir.path(), "enforce", &rules_file);
    let vexevent = Vexevent::start(&[&mount.path], &["--config", config.to_str().unwrap()]);
    std::fs::write(mount.path.join("first"), b"").unwrap();
    wait_until("the program's file", || by_program.exists());
    // A later creation still fires: the rule works, only the program's own creation was left out.
    std::fs::write(mount.path.join("second"), b"").unwrap();
    vexevent.wait_for("the second detection", DEADLINE, |events| detections(events, "creates").len() >= 2);
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let created: Vec<&Value> =
        finished.events.iter().filter(|e| e["event_type"] == "FilesystemCreate").collect();
    assert!(created.iter().any(|e| support::path_is(e, &by_program)), "the program's creation is an event");
    let keys: Vec<&str> = detections(&finished.events, "creates")
        .iter()
        .map(|d| d["context"]["parameters"]["key"].as_str().unwrap())
        .collect();
    let first = mount.path.join("first");
    let second = mount.path.join("second");
    assert_eq!(
        keys,
        [first.to_str().unwrap(), second.to_str().unwrap()],
        "no detection of the program's file"
    );
}

#[test]
fn check_config_puts_react_before_filter_and_lists_each_rule_problem() {
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.toml");
    std::fs::write(&rules_file, rules(r#"{ type = "signal", signal = "SIGSTOP" }"#)).unwrap();
    let config = config(dir.path(), "monitor", &rules_file);
    let checked = vexevent_command(&["check-config", config.to_str().unwrap()]);
    assert!(checked.status.success(), "{checked:?}");
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(out.contains("stages: kernel -> correlate -> react -> filter -> sequence -> route"), "{out}");

    std::fs::write(
        &rules_file,
        rules(r#"{ type = "run", argv = [], user = "root" }"#).replace("at_least = 200\n", ""),
    )
    .unwrap();
    let checked = vexevent_command(&["check-config", config.to_str().unwrap()]);
    assert!(!checked.status.success());
    let out = String::from_utf8_lossy(&checked.stdout);
    for expected in [
        "rules[0] (locker): kind count needs `at_least`",
        "rules[0] (locker): actions[0] (run): `argv` must name the program",
        "rules[0] (locker): actions[0] (run): user \"root\" is root",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in {out}");
    }
    std::fs::write(&rules_file, "[[rules]]\nname = \"x\"\nbogus = 1\n").unwrap();
    let checked = vexevent_command(&["check-config", config.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(out.contains("react.rules_file") && out.contains("line 3"), "{out}");
}

/// A recorded event line as vexevent writes it: `kind` at `ms` by `pid` on `path` (renamed to
/// `path.locked`), with `extra` JSON fields in its context.
fn recorded(id: u64, kind: &str, ms: u64, pid: u32, path: &str, extra: &str) -> String {
    format!(
        r#"{{"event_id":{id},"origin":{{"id":"elsewhere:0000000000000001:0:{id}:0"}},"event_type":"{kind}","event_type_code":0,"event_subtype":"","timestamp":{{"wall_ns":0,"monotonic_ns":{ns},"cpu":0,"pid":{pid},"sequence":0}},"global_sequence":0,"local_sequence":0,"flags":0,"priority":2,"event_size":0,"event_version":1,"context":{{"filesystem":{{"path":"{path}","target_path":"{path}.locked"}}{extra}}},"process":{{"pid":{pid},"tid":{pid},"uid":1000,"gid":1000,"comm":"perl"}},"result":{{"ok":true,"ret":0}},"duration_ns":1000}}"#,
        ns = ms * 1_000_000
    )
}

#[test]
fn rules_test_prints_each_rules_verdicts_and_what_its_actions_would_do() {
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.toml");
    let rules = rules(r#"{ type = "signal", signal = "SIGSTOP" }"#).replace("at_least = 200", "at_least = 3")
        + INDEX_UPKEEP;
    std::fs::write(&rules_file, rules).unwrap();
    let gap = r#","gap":{"cpu":1,"first_sequence":9,"count":37,"lost_by_operation":{},"lost_from_ns":5000000,"lost_to_ns":6000000}"#;
    // The gap report comes first: a detection is gapped when its gap is known by then.
    let mut lines = vec![recorded(4, "ObservabilityAlertTriggered", 6, 0, "/m", gap)];
    lines.extend((0..3).map(|i| recorded(i + 1, "FilesystemRename", 10 + i, 4242, &format!("/m/f{i}"), "")));
    lines.push(recorded(5, "FilesystemWrite", 3_000, 4242, "/m/later", ""));
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let output = vexevent_command(&[
        "rules",
        "test",
        rules_file.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let expected = [
        "5 events, 1 gaps (37 records lost)",
        "rule locker (count): 1 detections",
        "  at 12000000 ns, key 4242: gapped (records were lost in its window: a count may be short); matched [1, 2, 3]",
        "    would send SIGSTOP to pid 4242",
        "rule index-upkeep (absence): no detection, uncertain: 37 records were lost and may hold events it needs",
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");
}

#[test]
fn a_reload_replaces_the_rules() {
    let Some(_serial) = exclusive_root_test("a_reload_replaces_the_rules") else {
        return;
    };
    let mount = Mount::tmpfs();
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("rules.toml");
    let named = |name: &str, suffix: &str| {
        format!(
            "[[rules]]\nname = \"{name}\"\nkind = \"count\"\nmatch = 'type == FilesystemRename and target glob \"**/*.{suffix}\"'\nat_least = 5\nwithin_ms = 10000\nkey = \"dir\"\n"
        )
    };
    std::fs::write(&rules_file, named("first", "one")).unwrap();
    let config = config(dir.path(), "monitor", &rules_file);
    let vexevent = Vexevent::start(
        &[&mount.path],
        &["--config", config.to_str().unwrap(), "--control-addr", "127.0.0.1:0"],
    );
    let control = vexevent.served_address("http://");
    // Each round in a directory of its own: a key (`dir`) no rule has seen yet.
    let rename_all = |round: &str, suffix: &str| {
        let dir = mount.path.join(round);
        std::fs::create_dir(&dir).unwrap();
        for i in 0..5 {
            std::fs::write(dir.join(format!("f{i}")), b"x").unwrap();
            std::fs::rename(dir.join(format!("f{i}")), dir.join(format!("f{i}.{suffix}"))).unwrap();
        }
    };
    rename_all("a", "one");
    vexevent
        .wait_for("the first rule's detection", DEADLINE, |events| detections(events, "first").len() == 1);
    std::fs::write(&rules_file, named("second", "two")).unwrap();
    let (status, body) = post(&format!("http://{control}/api/v1/control/reload"), &vexevent.token());
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("[react]"), "rules reload without a restart: {body}");
    rename_all("b", "one");
    rename_all("c", "two");
    vexevent
        .wait_for("the second rule's detection", DEADLINE, |events| detections(events, "second").len() == 1);
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    assert_eq!(detections(&finished.events, "first").len(), 1, "the replaced rule detects no more");
    assert_eq!(finished.stats["rules"]["second"]["detections"], 1, "{}", finished.stats);
}
