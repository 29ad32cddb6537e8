//! Root tests of routing and sinks with real receivers: routes send each event to the sinks they
//! name (and the rest to `unmatched`), a webhook receiver that fails and then recovers gets every
//! batch once, reloading routes under load (SIGHUP, the control API, `vexevent reload`) applies every one of
//! eight reloads (a directory made after each reaches the sink it names) and loses and duplicates
//! nothing (a bad reload is refused and the running routes stay), and failover sends to the
//! standby while the primary is down, counting what the primary held at shutdown.

mod support;

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use support::{Mount, Vexevent, path_is, read_events, root_or_skip, webhook::webhook_receiver};

fn types(events: &[Value]) -> BTreeSet<String> {
    events.iter().map(|e| e["event_type"].as_str().unwrap().to_owned()).collect()
}

fn ids(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["event_id"].as_u64().unwrap()).collect()
}

#[test]
fn routes_deliver_each_event_to_its_sinks_and_a_failing_webhook_gets_every_batch_once() {
    if !root_or_skip("routes_deliver_each_event_to_its_sinks_and_a_failing_webhook_gets_every_batch_once") {
        return;
    }
    let mount = Mount::tmpfs();
    let out = tempfile::tempdir().unwrap();
    let (url, hook) = webhook_receiver(3);
    let file = |name: &str| out.path().join(name);
    let config = format!(
        r#"
[sinks.writes]
type = "file"
path = "{writes}"
[sinks.dirs]
type = "file"
path = "{dirs}"
[sinks.rest]
type = "file"
path = "{rest}"
[sinks.hook]
type = "webhook"
url = "{url}"
batch_events = 4
retry_initial_ms = 20

[[routes]]
name = "writes"
match = "type == FilesystemWrite"
targets = ["writes", "hook"]

[[routes]]
name = "dirs"
match = "type == FilesystemMkdir"
targets = ["dirs"]

[routing]
unmatched = ["rest"]
"#,
        writes = file("writes.jsonl").display(),
        dirs = file("dirs.jsonl").display(),
        rest = file("rest.jsonl").display(),
    );
    std::fs::write(file("vexevent.toml"), config).unwrap();
    let vexevent = Vexevent::start_with_own_sinks(
        &[&mount.path],
        &["--config", file("vexevent.toml").to_str().unwrap()],
    );
    for i in 0..10 {
        std::fs::write(mount.path.join(format!("f{i}")), b"data").unwrap();
    }
    for i in 0..5 {
        std::fs::create_dir(mount.path.join(format!("d{i}"))).unwrap();
    }
    for i in 0..3 {
        std::fs::remove_file(mount.path.join(format!("f{i}"))).unwrap();
    }
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);

    let writes = read_events(&file("writes.jsonl"));
    let dirs = read_events(&file("dirs.jsonl"));
    let rest = read_events(&file("rest.jsonl"));
    assert_eq!(writes.len(), 10, "{writes:?}");
    assert_eq!(types(&writes), BTreeSet::from(["FilesystemWrite".to_owned()]));
    for i in 0..10 {
        assert!(writes.iter().any(|e| path_is(e, &mount.path.join(format!("f{i}")))), "write to f{i}");
    }
    assert_eq!(dirs.len(), 5);
    assert_eq!(types(&dirs), BTreeSet::from(["FilesystemMkdir".to_owned()]));
    assert!(!types(&rest).contains("FilesystemWrite") && !types(&rest).contains("FilesystemMkdir"));
    assert!(types(&rest).contains("FilesystemDelete"), "{:?}", types(&rest));

    // Every event went to exactly one file sink: the union of their global sequence numbers is
    // 0..n, each once.
    let mut sequences: Vec<u64> = [&writes, &dirs, &rest]
        .iter()
        .flat_map(|events| events.iter())
        .map(|e| e["global_sequence"].as_u64().unwrap())
        .collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (0..sequences.len() as u64).collect::<Vec<_>>());

    // The webhook refused three requests, then got every write once, in order.
    let hook = hook.lock().unwrap();
    assert_eq!(hook.refused, 3);
    assert_eq!(ids(&hook.events()), ids(&writes), "the webhook got the writes once, in order");
    assert!(hook.batches.iter().all(|(_, events)| events.len() <= 4));

    let sinks = &finished.stats["sinks"];
    assert_eq!(sinks["hook"]["delivered"].as_u64(), Some(10));
    assert_eq!(sinks["hook"]["failed_attempts"].as_u64(), Some(3));
    assert_eq!(sinks["writes"]["delivered"].as_u64(), Some(10));
    assert_eq!(sinks["dirs"]["delivered"].as_u64(), Some(5));
    assert_eq!(finished.stats["routes"]["writes"].as_u64(), Some(10));
    assert_eq!(finished.stats["userspace"]["sink_errors"].as_u64(), Some(0));
    assert_eq!(finished.stats["userspace"]["events_unrouted"].as_u64(), Some(0));
}

/// A configuration sending everything to `target`.
fn everything_to(out: &Path, target: &str) -> String {
    format!(
        r#"
[sinks.first]
type = "file"
path = "{}"
[sinks.second]
type = "file"
path = "{}"

[[routes]]
name = "everything"
match = "true"
targets = ["{target}"]
"#,
        out.join("first.jsonl").display(),
        out.join("second.jsonl").display(),
    )
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

fn post_reload(url: &str, token: &str) -> (u16, String) {
    let mut response = agent()
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .send("")
        .expect("the control API answers");
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

/// Runs `vexevent reload ARGS`: whether it succeeded, its stdout and stderr.
fn reload_command(args: &[&str]) -> (bool, String, String) {
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_vexevent")).arg("reload").args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn get(url: &str, token: &str) -> String {
    let mut response = agent()
        .get(url)
        .header("authorization", format!("Bearer {token}"))
        .call()
        .expect("the control API answers");
    assert_eq!(response.status().as_u16(), 200, "{url}");
    response.body_mut().read_to_string().unwrap()
}

/// Directories created in a loop on another thread until `finish` (or until dropped, when a test
/// fails, so that the mount can still be unmounted). Paced (at most ~5,000 per second): the test is
/// about reloads, and an unpaced loop can outrun a debug-build consumer on a loaded machine until
/// the kernel rings overflow (losses that are reported, but not what this test checks).
struct MkdirLoad {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl MkdirLoad {
    fn start(dir: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, dir) = (Arc::clone(&stop), dir.to_owned());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    std::fs::create_dir(dir.join(format!("d{n}"))).unwrap();
                    n += 1;
                    std::thread::sleep(Duration::from_micros(200));
                }
                n
            })
        };
        Self { stop, thread: Some(thread) }
    }

    /// Stops the load; how many directories it made.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |thread| thread.join().unwrap())
    }
}

impl Drop for MkdirLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn reloading_routes_under_load_loses_and_duplicates_nothing() {
    if !root_or_skip("reloading_routes_under_load_loses_and_duplicates_nothing") {
        return;
    }
    let mount = Mount::tmpfs();
    let out = tempfile::tempdir().unwrap();
    let config = out.path().join("vexevent.toml");
    std::fs::write(&config, everything_to(out.path(), "first")).unwrap();
    let mut vexevent = Vexevent::start_with_own_sinks(
        &[&mount.path],
        &["--config", config.to_str().unwrap(), "--control-addr", "127.0.0.1:0"],
    );
    let control = vexevent.served_address("http://");

    let load = MkdirLoad::start(&mount.path);
    let stats_file = vexevent.stats_file.to_str().unwrap().to_owned();
    let (token, token_file) = (vexevent.token(), vexevent.token_file().to_str().unwrap().to_owned());
    for round in 0..8 {
        let target = if round % 2 == 0 { "second" } else { "first" };
        std::fs::write(&config, everything_to(out.path(), target)).unwrap();
        // Every way in: SIGHUP, the HTTP API, and `vexevent reload` through either.
        match round % 4 {
            0 => vexevent.signal(libc::SIGHUP),
            1 => {
                let (status, body) = post_reload(&format!("http://{control}/api/v1/control/reload"), &token);
                assert_eq!(status, 200, "{body}");
                assert!(body.contains("reloaded: 1 route(s)"), "{body}");
            }
            2 => {
                let (ok, stdout, stderr) =
                    reload_command(&["--control-addr", &control, "--token-file", &token_file]);
                assert!(ok && stdout.contains("reloaded: 1 route(s)"), "{stdout} {stderr}");
            }
            _ => {
                let (ok, stdout, stderr) = reload_command(&["--stats-file", &stats_file]);
                assert!(ok && stdout.contains("sent SIGHUP"), "{stdout} {stderr}");
            }
        }
        vexevent.wait_for_stderr_times("vexevent: reloaded", round + 1, Duration::from_secs(30));
        // This reload applied: a directory made after it reaches the sink it names (and the
        // load's mkdirs keep going meanwhile).
        let marker = mount.path.join(format!("reload-{round}"));
        std::fs::create_dir(&marker).unwrap();
        let target_file = out.path().join(format!("{target}.jsonl"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !read_events(&target_file).iter().any(|e| path_is(e, &marker)) {
            assert!(std::time::Instant::now() < deadline, "reload {round}: nothing reached {target}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A configuration that does not compile is refused; the running routes stay.
    std::fs::write(&config, everything_to(out.path(), "nowhere")).unwrap();
    let (status, body) = post_reload(&format!("http://{control}/api/v1/control/reload"), &token);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("reload refused") && body.contains("\"nowhere\""), "{body}");
    let (ok, _, stderr) = reload_command(&["--control-addr", &control, "--token-file", &token_file]);
    assert!(!ok && stderr.contains("reload refused"), "{stderr}");
    let made = load.finish();
    // The same counters through the control API: JSON stats and Prometheus metrics.
    let snapshot: Value =
        serde_json::from_str(&get(&format!("http://{control}/api/v1/control/stats"), &token)).unwrap();
    assert!(snapshot["sinks"]["first"]["delivered"].as_u64().unwrap() > 0, "{snapshot}");
    let metrics = get(&format!("http://{control}/metrics"), &token);
    for family in [
        r#"vexevent_sink_delivered_total{sink="second"}"#,
        r#"vexevent_route_matched_total{route="everything"}"#,
    ] {
        assert!(metrics.contains(family), "{family} missing from:\n{metrics}");
    }
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);

    let first = read_events(&out.path().join("first.jsonl"));
    let second = read_events(&out.path().join("second.jsonl"));
    assert!(!first.is_empty() && !second.is_empty(), "both sinks were used");
    let all: Vec<&Value> = first.iter().chain(&second).collect();
    let mut sequences: Vec<u64> = all.iter().map(|e| e["global_sequence"].as_u64().unwrap()).collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (0..sequences.len() as u64).collect::<Vec<_>>(), "no event lost or duplicated");
    let markers: Vec<std::path::PathBuf> =
        (0..8).map(|round| mount.path.join(format!("reload-{round}"))).collect();
    for (round, marker) in markers.iter().enumerate() {
        let (in_first, in_second) =
            (first.iter().any(|e| path_is(e, marker)), second.iter().any(|e| path_is(e, marker)));
        // Even rounds switched to `second`, odd ones back to `first`: each marker is in its
        // round's sink only.
        assert_eq!((in_first, in_second), (round % 2 == 1, round % 2 == 0), "reload {round}");
    }
    let mkdirs = all
        .iter()
        .filter(|e| e["event_type"] == "FilesystemMkdir" && !markers.iter().any(|m| path_is(e, m)))
        .count() as u64;
    assert_eq!(mkdirs, made, "every mkdir of the load, once: {}", finished.stats);
    assert_eq!(finished.stats["loss"]["lost_reported"].as_u64(), Some(0), "no loss in the kernel either");
}

#[test]
fn failover_sends_to_the_standby_while_the_primary_is_down_and_counts_what_the_primary_held() {
    if !root_or_skip(
        "failover_sends_to_the_standby_while_the_primary_is_down_and_counts_what_the_primary_held",
    ) {
        return;
    }
    let mount = Mount::tmpfs();
    let out = tempfile::tempdir().unwrap();
    let (url, hook) = webhook_receiver(usize::MAX);
    let standby = out.path().join("standby.jsonl");
    let config = out.path().join("vexevent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sinks.primary]
type = "webhook"
url = "{url}"
batch_ms = 0
[sinks.standby]
type = "file"
path = "{}"

[[routes]]
name = "mkdirs"
match = "type == FilesystemMkdir"
targets = ["primary", "standby"]
failover = true
"#,
            standby.display()
        ),
    )
    .unwrap();
    let vexevent = Vexevent::start_with_own_sinks(&[&mount.path], &["--config", config.to_str().unwrap()]);
    std::fs::create_dir(mount.path.join("first")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats: Value = std::fs::read(&vexevent.stats_file)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or_default();
        if stats["sinks"]["primary"]["down"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the primary never went down: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..10 {
        std::fs::create_dir(mount.path.join(format!("d{i}"))).unwrap();
    }
    vexevent.wait_for("the standby to get the mkdirs", Duration::from_secs(30), |_| {
        read_events(&standby).len() >= 10
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);

    let delivered = read_events(&standby);
    assert_eq!(delivered.len(), 10, "every mkdir after the primary went down: {delivered:?}");
    let primary = &finished.stats["sinks"]["primary"];
    assert_eq!(primary["delivered"].as_u64(), Some(0));
    assert_eq!(
        primary["dropped_shutdown"].as_u64(),
        Some(1),
        "the first mkdir, held by the primary: {primary}"
    );
    assert_eq!(finished.stats["userspace"]["sink_errors"].as_u64(), Some(1));
    assert!(hook.lock().unwrap().refused >= 1);
}

#[test]
fn a_reload_moves_the_part_of_the_filter_the_kernel_applies() {
    if !root_or_skip("a_reload_moves_the_part_of_the_filter_the_kernel_applies") {
        return;
    }
    let mount = Mount::tmpfs();
    let out = tempfile::tempdir().unwrap();
    let config = out.path().join("vexevent.toml");
    let only = |comm: &str| format!("[filter]\nexpressions = ['comm == \"{comm}\"']\n");
    std::fs::write(&config, only("touch")).unwrap();
    let mut vexevent = Vexevent::start(&[&mount.path], &["--config", config.to_str().unwrap()]);
    let run = |program: &str, name: &str| {
        let status = std::process::Command::new(program).arg(mount.path.join(name)).status().unwrap();
        assert!(status.success(), "{program} {name}");
    };
    let has = |events: &[Value], event_type: &str, name: &str| {
        events.iter().any(|e| e["event_type"] == event_type && path_is(e, &mount.path.join(name)))
    };
    run("mkdir", "before");
    run("touch", "before.txt");
    vexevent.wait_for("the touch", Duration::from_secs(30), |events| {
        has(events, "FilesystemCreate", "before.txt")
    });

    // The kernel now filters by the new comm: without setting it again, mkdir's events would stay
    // filtered in the kernel and never reach the new filter.
    std::fs::write(&config, only("mkdir")).unwrap();
    vexevent.signal(libc::SIGHUP);
    vexevent.wait_for_stderr("vexevent: reloaded", Duration::from_secs(30));
    run("touch", "after.txt");
    run("mkdir", "after");
    vexevent.wait_for("the mkdir", Duration::from_secs(30), |events| has(events, "FilesystemMkdir", "after"));
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let events = &finished.events;
    assert!(!has(events, "FilesystemMkdir", "before"), "mkdir was filtered before the reload");
    assert!(!has(events, "FilesystemCreate", "after.txt"), "touch is filtered after the reload");
    assert!(finished.stats["kernel"]["filtered_comm"].as_u64().unwrap() > 0, "filtered in the kernel");
    assert!(
        !finished.stderr.iter().any(|l| l.contains("restart")),
        "nothing about this reload waits for a restart: {:?}",
        finished.stderr
    );
}
