//! Root tests of the analyse stage with real workloads: its windows count exactly what reached
//! the sinks (emitted as window events), its top lists and the dashboard's summary stream name
//! the busiest file, `/readyz` passes, `/metrics` passes `promtool check metrics` for the
//! histograms and holds every metric the Grafana dashboard queries, and a tenfold rate change on
//! one file is flagged within 10 s of event time while the steady phase before it raises nothing;
//! a headless Chromium opens the dashboard while a workload runs and shows its files, counts and
//! cgroup; the FUSE daemon's time per mount and handler is a series of its own; `vexevent top` in
//! tmux; a workload in a fresh cgroup is counted under its cgroup's path.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Bindfs, Vexevent, exclusive_root_test, path_is};
use vexevent::telemetry::monotonic_ns;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// GET with the token: status and body.
fn get(url: &str, token: &str) -> (u16, String) {
    let mut response = agent()
        .get(url)
        .header("authorization", format!("Bearer {token}"))
        .call()
        .expect("the control API answers");
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

/// `vexevent run` on `watch` with the analyse stage on (plus `analyse`, TOML lines of
/// `[analyse]`) and the control API; its control address.
fn start(watch: &Path, analyse: &str) -> (Vexevent, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vexevent.toml");
    std::fs::write(&config, format!("[analyse]\nenabled = true\n{analyse}\n")).unwrap();
    let vexevent =
        Vexevent::start(&[watch], &["--config", config.to_str().unwrap(), "--control-addr", "127.0.0.1:0"]);
    let control = vexevent
        .stderr
        .iter()
        .find_map(|line| line.split("http://").nth(1)?.split('/').next().map(str::to_owned))
        .expect("the control API address on stderr");
    (vexevent, control, dir)
}

/// Reads the dashboard's summary stream until `done` holds for a frame (or the deadline passes).
fn frame_where(control: &str, token: &str, deadline: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let response = agent()
        .get(format!("http://{control}/dashboard/events"))
        .header("authorization", format!("Bearer {token}"))
        .call()
        .expect("the dashboard stream answers");
    assert_eq!(response.status().as_u16(), 200);
    let end = Instant::now() + deadline;
    let mut seen = 0;
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.expect("the stream reads");
        if let Some(data) = line.strip_prefix("data:") {
            let frame: Value = serde_json::from_str(data.trim()).unwrap();
            seen += 1;
            if done(&frame) {
                return frame;
            }
        }
        assert!(Instant::now() < end, "no matching window summary among {seen}");
    }
    panic!("the stream ended")
}

/// Writes `file` `times` times (open, write, close).
fn write_times(file: &Path, times: usize) {
    for _ in 0..times {
        std::fs::write(file, b"data").unwrap();
    }
}

#[test]
fn windows_and_top_lists_follow_a_fuse_workload_and_the_metrics_check_out() {
    let Some(_serial) =
        exclusive_root_test("windows_and_top_lists_follow_a_fuse_workload_and_the_metrics_check_out")
    else {
        return;
    };
    let watched = tempfile::tempdir().unwrap();
    let bindfs = Bindfs::mount(watched.path());
    let (vexevent, control, _config) = start(watched.path(), "emit = [\"path\"]");
    let token = vexevent.token();
    let (hot, warm) = (bindfs.mount_point.join("hot"), bindfs.mount_point.join("warm"));
    write_times(&hot, 40);
    write_times(&warm, 10);

    // Each window of a path is an event: their counts add up to the file's events in the output.
    let windowed = |events: &[Value], file: &Path| -> (u64, u64) {
        let counted = events
            .iter()
            .filter(|e| e["event_subtype"] == "window:path" && path_is(e, file))
            .map(|e| e["context"]["parameters"]["count"].as_str().unwrap().parse::<u64>().unwrap())
            .sum();
        let delivered = events
            .iter()
            .filter(|e| e["event_type"] != "ObservabilityMetricCollected" && path_is(e, file))
            .count();
        (counted, delivered as u64)
    };
    vexevent.wait_for("the windows of both files", Duration::from_secs(30), |events| {
        let (counted, delivered) = windowed(events, &hot);
        counted > 0 && counted == delivered && windowed(events, &warm).0 == windowed(events, &warm).1
    });
    let events = vexevent.events_so_far();
    let (hot_count, _) = windowed(&events, &hot);
    assert!(hot_count >= 40 * 3, "open, write and close per write: {hot_count}");
    let window = events.iter().find(|e| e["event_subtype"] == "window:path" && path_is(e, &hot)).unwrap();
    let params = &window["context"]["parameters"];
    assert_eq!(params["lost"], "0", "{window}");
    assert!(params["bytes"].as_str().unwrap().parse::<u64>().unwrap() > 0, "{window}");

    // The summary stream: the hot file first since start, FUSE stages timed. The stream opens with
    // the kept history, whose first frames may predate the last of the writes (a slow machine
    // spreads them over several windows): wait for the frame whose since-start count has them all.
    let hot_text = hot.to_str().unwrap().to_owned();
    let frame = frame_where(&control, &token, Duration::from_secs(30), |frame| {
        frame["top_total"]["path"][0]["key"] == hot_text.as_str()
            && frame["top_total"]["path"][0]["count"].as_u64() == Some(hot_count)
    });
    assert_eq!(frame["top_total"]["path"][0]["count"].as_u64(), Some(hot_count), "{frame}");
    assert_eq!(frame["top_total"]["path"][0]["error"], 0);
    assert_eq!(frame["top_total"]["path"][1]["key"], warm.to_str().unwrap());

    // The daemon's time per mount and handler: every WRITE request whose daemon side was seen
    // (read of the request to its reply) is in the WRITE handler's series of bindfs's connection.
    let daemon_writes: Vec<&Value> = events
        .iter()
        .flat_map(|e| e["context"]["fuse"].as_array().into_iter().flatten())
        .filter(|r| r["opcode_name"] == "WRITE" && r["daemon_replied_ns"].is_u64())
        .collect();
    assert!(!daemon_writes.is_empty(), "bindfs's WRITE requests have their daemon side");
    let connection = daemon_writes[0]["connection"].as_u64().unwrap();
    let function = format!("{connection}:WRITE");
    let frame = frame_where(&control, &token, Duration::from_secs(30), |frame| {
        frame["daemon_functions"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["name"] == function.as_str()))
    });
    let row = frame["daemon_functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == function.as_str())
        .unwrap();
    assert!(row["count"].as_u64() > Some(0) && row["p99_us"].as_u64() >= row["p50_us"].as_u64(), "{row}");

    let (status, ready) = get(&format!("http://{control}/readyz"), &token);
    assert_eq!(status, 200, "{ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["ready"], true);
    let rings =
        ready["checks"].as_array().unwrap().iter().find(|c| c["name"] == "rings").expect("a rings check");
    assert_eq!(rings["reason"], "every ring under 80% full when last drained", "{ready}");
    let (status, _) = get(&format!("http://{control}/readyz"), "wrong");
    assert_eq!(status, 401, "through the API's auth");

    let (status, metrics) = get(&format!("http://{control}/metrics"), &token);
    assert_eq!(status, 200);
    for histogram in [
        "delivery_latency_seconds",
        "operation_latency_seconds",
        "fuse_stage_latency_seconds",
        "fuse_mount_latency_seconds",
        "fuse_daemon_function_latency_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE vexevent_{histogram} histogram")),
            "{histogram} in:\n{metrics}"
        );
    }
    assert!(!metrics.contains("quantile="), "no gauge with a quantile label");
    let written = format!(
        "vexevent_fuse_daemon_function_latency_seconds_count{{connection=\"{connection}\",function=\"WRITE\"}} {}",
        daemon_writes.len()
    );
    assert!(metrics.contains(&written), "{written} in:\n{metrics}");
    promtool_finds_no_problem_with_the_histograms(&metrics);
    every_metric_of_the_grafana_dashboard_is_served(&metrics);
    drop(vexevent.stop());
    drop(bindfs);
}

/// `promtool check metrics` on the live text: nothing about the histograms or the analyse and
/// health metrics (the older counters' `_total` families draw notes of the `OpenMetrics` format).
fn promtool_finds_no_problem_with_the_histograms(metrics: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is not installed: run scripts/setup.sh");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    for ours in ["latency", "vexevent_health", "vexevent_ready", "quantile"] {
        assert!(!report.contains(ours), "promtool on {ours}:\n{report}");
    }
}

/// Every `vexevent_*` metric a query of the Grafana dashboard names is in `metrics`.
fn every_metric_of_the_grafana_dashboard_is_served(metrics: &str) {
    let dashboard: Value = serde_json::from_str(include_str!("../deploy/grafana/vexevent-dashboard.json"))
        .expect("dashboard JSON");
    let served: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                queried += 1;
                assert!(
                    served.contains(name.as_str()),
                    "{name} (panel {}) is not in /metrics",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 10, "the dashboard queries {queried} metrics");
}

/// The `vexevent_*` names in a `PromQL` expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("vexevent_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Writes `file` at `per_second` writes a second for `seconds`, catching up after a stall so each
/// second gets its share.
fn paced_writes(file: &Path, per_second: u64, seconds: u64) {
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        let due = u64::try_from(start.elapsed().as_millis()).unwrap() * per_second / 1_000;
        while done < due {
            std::fs::write(file, b"x").unwrap();
            done += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_tenfold_rate_on_one_file_is_flagged_within_ten_seconds_and_the_steady_phase_is_not() {
    let Some(_serial) = exclusive_root_test(
        "a_tenfold_rate_on_one_file_is_flagged_within_ten_seconds_and_the_steady_phase_is_not",
    ) else {
        return;
    };
    let mount = support::Mount::tmpfs();
    let (vexevent, _control, _config) = start(
        &mount.path,
        "dimensions = [\"path\", \"operation\"]\n[analyse.anomaly]\ndimensions = [\"path\"]\nwarmup_windows = 8",
    );
    let file = mount.path.join("app.log");
    paced_writes(&file, 40, 12);
    let changed_ns = monotonic_ns();
    paced_writes(&file, 400, 4);
    let anomaly_on_file =
        |events: &[Value]| events.iter().any(|e| e["event_subtype"] == "anomaly:rate" && path_is(e, &file));
    vexevent.wait_for("an anomaly on the file", Duration::from_secs(30), anomaly_on_file);
    let finished = vexevent.stop();
    let anomalies: Vec<&Value> = finished
        .events
        .iter()
        .filter(|e| e["event_subtype"].as_str().is_some_and(|s| s.starts_with("anomaly:")))
        .collect();
    let parameter =
        |e: &Value, name: &str| e["context"]["parameters"][name].as_str().unwrap().parse::<f64>().unwrap();
    let end_ns =
        |e: &Value| e["context"]["parameters"]["window_end_ns"].as_str().unwrap().parse::<u64>().unwrap();
    for anomaly in &anomalies {
        assert!(end_ns(anomaly) > changed_ns, "the steady phase raised an anomaly: {anomaly}");
    }
    let first = anomalies.iter().find(|e| e["event_subtype"] == "anomaly:rate" && path_is(e, &file)).unwrap();
    let flagged_after = Duration::from_nanos(end_ns(first) - changed_ns);
    assert!(
        flagged_after <= Duration::from_secs(10),
        "flagged {flagged_after:?} of event time after the change: {first}"
    );
    assert!(parameter(first, "observed") >= 3.0 * parameter(first, "baseline"), "{first}");
    assert_eq!(first["event_type"], "ObservabilityAlertTriggered");
    eprintln!(
        "anomaly flagged {:.2} s of event time after the change (baseline {}, observed {})",
        flagged_after.as_secs_f64(),
        parameter(first, "baseline"),
        parameter(first, "observed")
    );
}

/// A headless Chromium driven over the `DevTools` protocol (one page, commands answered in order).
struct Browser {
    child: std::process::Child,
    socket: tokio_tungstenite::tungstenite::WebSocket<
        tokio_tungstenite::tungstenite::stream::MaybeTlsStream<std::net::TcpStream>,
    >,
    next_id: u64,
    /// Console errors and uncaught exceptions seen so far.
    errors: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--window-size=1400,2200",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium (Debian package chromium) is not installed: run scripts/setup.sh");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let browser_url = stderr
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.split("DevTools listening on ").nth(1).map(str::to_owned))
            .expect("chromium's DevTools address");
        let port = browser_url.split(':').nth(2).unwrap().split('/').next().unwrap().to_owned();
        let (_, list) = get(&format!("http://127.0.0.1:{port}/json/list"), "");
        let targets: Value = serde_json::from_str(&list).unwrap();
        let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page");
        let (socket, _) =
            tokio_tungstenite::tungstenite::connect(page["webSocketDebuggerUrl"].as_str().unwrap())
                .expect("the page's DevTools socket");
        let mut browser = Self { child, socket, next_id: 0, errors: Vec::new(), _profile: profile };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, &serde_json::json!({}));
        }
        browser
    }

    /// Sends a command and returns its result, noting the console errors that come meanwhile.
    fn call(&mut self, method: &str, params: &Value) -> Value {
        use tokio_tungstenite::tungstenite::Message;
        self.next_id += 1;
        let id = self.next_id;
        let command = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket.send(Message::text(command.to_string())).unwrap();
        loop {
            let Message::Text(text) = self.socket.read().expect("DevTools answers") else { continue };
            let message: Value = serde_json::from_str(&text).unwrap();
            match message["method"].as_str() {
                Some("Runtime.exceptionThrown") => self.errors.push(message["params"].to_string()),
                Some("Runtime.consoleAPICalled") if message["params"]["type"] == "error" => {
                    self.errors.push(message["params"].to_string());
                }
                Some("Log.entryAdded") if message["params"]["entry"]["level"] == "error" => {
                    self.errors.push(message["params"]["entry"].to_string());
                }
                _ => {}
            }
            if message["id"].as_u64() == Some(id) {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            &serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_dashboard_shows_a_running_workload_in_chromium() {
    let Some(_serial) = exclusive_root_test("the_dashboard_shows_a_running_workload_in_chromium") else {
        return;
    };
    let mount = support::Mount::tmpfs();
    let (vexevent, _control, _config) = start(&mount.path, "");
    let login = vexevent
        .stderr
        .iter()
        .find_map(|line| line.split("dashboard: open ").nth(1)?.split(' ').next().map(str::to_owned))
        .expect("the one-time login URL on stderr");
    let file = mount.path.join("dashboard-hot.txt");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workload = {
        let (file, stop) = (file.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                paced_writes(&file, 50, 1);
            }
        })
    };
    let mut browser = Browser::start();
    browser.call("Page.navigate", &serde_json::json!({ "url": login }));
    let wanted = file.to_str().unwrap().to_owned();
    // The workload's cgroup (this process's), as the cgroup table names it once walked.
    let own_cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let shown = browser.eval(
            "JSON.stringify({ files: [...document.querySelectorAll('#top-files td.key')].map(e => e.textContent), \
             counts: [...document.querySelectorAll('#top-files tbody tr')].map(r => Number(r.children[1].textContent)), \
             cgroups: [...document.querySelectorAll('#top-cgroups tbody tr')].map(r => [r.children[0].textContent, Number(r.children[1].textContent)]), \
             events: Number(document.getElementById('status')?.dataset.events || 0), \
             charts: document.querySelectorAll('.uplot').length, path: location.pathname })",
        );
        let shown: Value = serde_json::from_str(shown.as_str().unwrap_or("{}")).unwrap_or_default();
        // The first window that shows the file may have begun before the writer did: wait for a
        // whole window of 50 writes a second.
        if shown["files"].as_array().is_some_and(|f| f.iter().any(|f| f == wanted.as_str()))
            && shown["events"].as_u64() > Some(0)
            && shown["counts"][0].as_u64() > Some(10)
            && (own_cgroup.is_empty()
                || shown["cgroups"].as_array().is_some_and(|rows| {
                    rows.iter().any(|row| row[0] == own_cgroup.as_str() && row[1].as_u64() > Some(10))
                }))
        {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed {wanted} with more than 10 writes (50 a second) counted, nor \
             the cgroup {own_cgroup} with them: {shown}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(shown["path"], "/dashboard", "the login URL led to the dashboard");
    assert!(shown["charts"].as_u64() >= Some(3), "charts drawn: {shown}");
    let screenshot = browser.call("Page.captureScreenshot", &serde_json::json!({ "format": "png" }));
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        screenshot["data"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("dashboard screenshot: {} ({} bytes); shown: {shown}", shot.display(), png.len());
    assert!(browser.errors.is_empty(), "console errors: {:?}", browser.errors);
    // The login URL was spent: a second browser cannot use it.
    let (status, _) = get(&login, "");
    assert_eq!(status, 401);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    workload.join().unwrap();
    drop(browser);
    drop(vexevent.stop());
}

#[test]
fn vexevent_top_shows_the_busiest_file_in_a_terminal() {
    let Some(_serial) = exclusive_root_test("vexevent_top_shows_the_busiest_file_in_a_terminal") else {
        return;
    };
    let mount = support::Mount::tmpfs();
    let (vexevent, control, _config) = start(&mount.path, "");
    let file = mount.path.join("top-hot.txt");
    let session = format!("vexevent-top-{}", std::process::id());
    let command = format!(
        "{} top --control-addr {control} --token-file {}",
        env!("CARGO_BIN_EXE_vexevent"),
        vexevent.token_file().display()
    );
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().expect("tmux is installed");
    assert!(tmux(&["new-session", "-d", "-s", &session, "-x", "200", "-y", "50", &command]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let screen = loop {
        write_times(&file, 20);
        let screen =
            String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned();
        if screen.contains("top-hot.txt") && screen.contains("vexevent top") {
            break screen;
        }
        assert!(Instant::now() < deadline, "vexevent top never showed the file:\n{screen}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = tmux(&["kill-session", "-t", &session]);
    let row = screen.lines().find(|line| line.contains("top-hot.txt") && !line.starts_with("write")).unwrap();
    let ops: u64 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(ops > 0, "{screen}");
    assert!(
        screen.contains("PROCESS") && screen.contains("CGROUP") && screen.contains("SLOWEST"),
        "{screen}"
    );
    eprintln!("{screen}");
    drop(vexevent.stop());
}

/// A cgroup v2 directory made for a test, removed when dropped (once its processes are gone).
struct Cgroup(std::path::PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_workload_in_a_fresh_cgroup_is_counted_under_its_cgroup_path() {
    let Some(_serial) = exclusive_root_test("a_workload_in_a_fresh_cgroup_is_counted_under_its_cgroup_path")
    else {
        return;
    };
    // The cgroup v2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(root) =
        mountinfo.lines().find(|line| line.contains(" - cgroup2 ")).and_then(|line| line.split(' ').nth(4))
    else {
        eprintln!("skipped: no cgroup v2 file system is mounted");
        return;
    };
    let root = Path::new(root);
    let name = format!("vexevent-test-{}", std::process::id());
    let cgroup = Cgroup(root.join(&name));
    std::fs::create_dir(&cgroup.0).expect("a new cgroup");
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup.0).unwrap());
    let mount = support::Mount::tmpfs();
    let (vexevent, _control, _config) = start(
        &mount.path,
        "dimensions = [\"path\", \"cgroup\"]\nemit = [\"cgroup\"]\n[analyse.anomaly]\ndimensions = [\"cgroup\"]",
    );
    let file = mount.path.join("in-cgroup.log");
    // A shell moves itself into the cgroup, then writes the file 50 times.
    let script = format!(
        "echo $$ > {}/cgroup.procs && for i in $(seq 50); do echo x > {}; done",
        cgroup.0.display(),
        file.display()
    );
    assert!(Command::new("sh").arg("-c").arg(&script).status().unwrap().success());
    // The cgroup is walked on a worker when first seen: its first window may name it by number.
    let (key, number) = (format!("/{name}"), format!("cgroup:{id}"));
    let counted = |events: &[Value], keys: &[&str]| -> u64 {
        events
            .iter()
            .filter(|e| {
                e["event_subtype"] == "window:cgroup"
                    && keys.iter().any(|k| e["context"]["parameters"]["key"] == *k)
            })
            .map(|e| e["context"]["parameters"]["count"].as_str().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let both = [key.as_str(), number.as_str()];
    vexevent.wait_for("the cgroup's windows", Duration::from_secs(30), |events| counted(events, &both) >= 50);
    // Later windows name it by its path (the walk has come back by then).
    assert!(Command::new("sh").arg("-c").arg(&script).status().unwrap().success());
    vexevent.wait_for("a window naming the cgroup by its path", Duration::from_secs(30), |events| {
        counted(events, &[&key]) > 0 && counted(events, &both) >= 100
    });
    let finished = vexevent.stop();
    let writes: Vec<&Value> = finished.events.iter().filter(|e| path_is(e, &file)).collect();
    assert!(writes.len() >= 100, "{} events on the file", writes.len());
    assert!(
        writes.iter().all(|e| e["process"]["cgroup_id"] == id),
        "every event on the file carries the cgroup's id {id}: {:?}",
        writes.iter().map(|e| &e["process"]).collect::<Vec<_>>()
    );
    assert_eq!(counted(&finished.events, &both), writes.len() as u64, "the cgroup's windows count them all");
}
