//! The analyse stage on synthetic events: windows close on the watermark with their counts and
//! loss, top lists, derived events (windows, anomalies, health), summaries published.

use super::*;
use crate::event::{EventType, GapContext, NodeId};

const SECOND: u64 = 1_000_000_000;

fn event(path: &str, comm: &str, at_ns: u64, duration_ns: u64) -> SemanticEvent {
    let mut event = SemanticEvent::sample(EventType::FilesystemRead, path, 42, comm, true);
    event.timestamp.monotonic_ns = at_ns;
    event.timestamp.wall_ns = at_ns + 1_000 * SECOND;
    event.duration_ns = duration_ns;
    event.context.filesystem.as_mut().unwrap().bytes = Some(100);
    event
}

fn stage(config: AnalyseConfig) -> (AnalyseStage, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    counters.health.set_probes_attached(1);
    (AnalyseStage::new(config, Run::new(NodeId::host()), Arc::clone(&counters)), counters)
}

fn run(stage: &mut AnalyseStage, events: Vec<SemanticEvent>, watermark_ns: u64) -> Vec<SemanticEvent> {
    let mut batch = EventBatch::default();
    batch.events = events;
    batch.watermark_ns = watermark_ns;
    stage.process(&mut batch);
    batch.events
}

fn frames(counters: &Counters) -> Vec<serde_json::Value> {
    counters.analytics.history().iter().map(|f| serde_json::from_str(f).unwrap()).collect()
}

#[test]
fn a_window_closes_on_the_watermark_with_counts_top_keys_and_loss() {
    let (mut stage, counters) = stage(AnalyseConfig { enabled: true, ..AnalyseConfig::default() });
    let mut events: Vec<SemanticEvent> =
        (0..30).map(|i| event("/w/hot", "cat", 10 * SECOND + i, 2_000)).collect();
    events.extend((0..5).map(|i| event("/w/d/cold", "dd", 10 * SECOND + 100 + i, 50_000)));
    let mut gap = event("/", "x", 10 * SECOND + 500, 0);
    gap.context.gap = Some(GapContext {
        count: 7,
        lost_from_ns: 10 * SECOND + 200,
        lost_to_ns: 10 * SECOND + 300,
        ..GapContext::default()
    });
    gap.result = None;
    events.push(gap);
    let passed = run(&mut stage, events, 10 * SECOND + 900);
    assert_eq!(passed.len(), 36, "events pass through");
    assert!(frames(&counters).is_empty(), "the window has not ended");
    let wall_us = || u64::try_from(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_micros()).unwrap();
    let before_close = wall_us();
    run(&mut stage, vec![event("/w/hot", "cat", 11 * SECOND + 5, 1_000)], 11 * SECOND + 10);
    let after_close = wall_us();
    let [frame] = frames(&counters).try_into().unwrap();
    let closed = frame["closed_wall_us"].as_u64().unwrap();
    assert!((before_close..=after_close).contains(&closed), "the system clock when the window closed");
    assert_eq!((frame["start_ns"].as_u64(), frame["events"].as_u64()), (Some(10 * SECOND), Some(36)));
    assert_eq!(frame["lost"], 7, "the gap's loss is carried by its window");
    assert_eq!(frame["top"]["path"][0]["key"], "/w/hot");
    assert_eq!(frame["top"]["path"][0]["count"], 30);
    assert_eq!(frame["top"]["path"][1]["bytes"], 500);
    assert_eq!(frame["top"]["dir"][0]["key"], "/w");
    assert_eq!(frame["top"]["comm"][0]["key"], "cat");
    assert_eq!(frame["by_type"]["FilesystemRead"], 36, "the gap event too (a sample here)");
    assert_eq!(frame["top_total"]["path"][0]["error"], 0);
    assert_eq!(frame["operations"][0]["name"], "openat");
    assert_eq!(frame["slowest"][0]["path"], "/w/d/cold");
    assert_eq!(frame["slowest"][0]["duration_us"], 50);
    assert_eq!(frame["wall_ms"], (11 + 1_000) * 1_000, "wall time of the window's end");
}

#[test]
fn empty_windows_are_reported_and_windows_become_events_when_asked() {
    let config =
        AnalyseConfig { enabled: true, emit: vec![Dimension::Operation], ..AnalyseConfig::default() };
    let (mut stage, counters) = stage(config);
    run(&mut stage, vec![event("/a", "c", 5 * SECOND, 10)], 5 * SECOND);
    let derived = run(&mut stage, vec![event("/a", "c", 8 * SECOND + 1, 10)], 8 * SECOND + 1);
    let counts: Vec<u64> = frames(&counters).iter().map(|f| f["events"].as_u64().unwrap()).collect();
    assert_eq!(counts, [1, 0, 0], "seconds 5, 6 and 7");
    let windows: Vec<&SemanticEvent> =
        derived.iter().filter(|e| e.event_type == EventType::ObservabilityMetricCollected).collect();
    assert_eq!(windows.len(), 1, "one key in one non-empty window");
    let params = &windows[0].context.parameters;
    assert_eq!((params["key"].as_str(), params["count"].as_str()), ("openat", "1"));
    assert_eq!(windows[0].event_subtype, "window:operation");
    assert_eq!(windows[0].timestamp.monotonic_ns, 6 * SECOND, "stamped at the window's end");
}

#[test]
fn a_tenfold_rate_raises_one_anomaly_event_and_a_steady_rate_none() {
    let (mut stage, counters) = stage(AnalyseConfig { enabled: true, ..AnalyseConfig::default() });
    let mut alerts = Vec::new();
    for second in 0..40u64 {
        let rate = if second < 30 { 50 } else { 500 };
        let events = (0..rate).map(|i| event("/w/f", "app", second * SECOND + i * 1_000, 5_000)).collect();
        alerts.extend(
            run(&mut stage, events, (second + 1) * SECOND)
                .into_iter()
                .filter(|e| e.event_type == EventType::ObservabilityAlertTriggered),
        );
    }
    let subjects: Vec<(String, String)> =
        alerts.iter().map(|e| (e.event_subtype.clone(), e.context.parameters["key"].clone())).collect();
    assert!(subjects.contains(&("anomaly:rate".into(), "/w/f".into())), "{subjects:?}");
    let path_alert = alerts.iter().find(|e| e.context.parameters["key"] == "/w/f").unwrap();
    assert_eq!(
        path_alert.context.parameters["window_start_ns"],
        (30 * SECOND).to_string(),
        "flagged in its first window"
    );
    assert_eq!(path_alert.context.parameters["baseline"], "50.000");
    assert_eq!(counters.analytics.anomalies.load(std::sync::atomic::Ordering::Relaxed), alerts.len() as u64);
    assert!(alerts.iter().all(|e| e.event_subtype == "anomaly:rate"), "{subjects:?}");
}

#[test]
fn a_failing_health_check_is_an_event_once() {
    let (mut stage, counters) = stage(AnalyseConfig { enabled: true, ..AnalyseConfig::default() });
    counters.record_gap(crate::telemetry::Gap { cpu: 0, first: 1, count: 2, reported: true });
    let mut health = Vec::new();
    for second in 1..4 {
        health.extend(
            run(&mut stage, vec![event("/a", "c", second * SECOND, 1)], second * SECOND + 1)
                .into_iter()
                .filter(|e| e.event_subtype.starts_with("health:")),
        );
    }
    let [alert] = health.try_into().unwrap();
    assert_eq!(alert.event_subtype, "health:loss");
    assert!(alert.context.parameters["reason"].contains("lost"), "{:?}", alert.context.parameters);
}

#[test]
fn ten_minutes_of_a_steady_noisy_workload_raise_no_anomaly() {
    let (mut stage, counters) = stage(AnalyseConfig { enabled: true, ..AnalyseConfig::default() });
    // xorshift: the same noisy stream every run.
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut noise = move |spread: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % (2 * spread + 1)
    };
    let mut alerts = Vec::new();
    for second in 0..600u64 {
        let mut events = Vec::new();
        for (path, rate, latency) in [("/w/a", 200, 5_000), ("/w/b", 50, 80_000), ("/w/c", 20, 1_000)] {
            // Rates within +-25 % and latencies within +-50 % of their mean.
            let count = rate - rate / 4 + noise(rate / 4);
            for i in 0..count {
                let jitter = noise(latency / 2);
                events.push(event(path, "app", second * SECOND + i * 1_000, latency / 2 + jitter));
            }
        }
        alerts.extend(
            run(&mut stage, events, (second + 1) * SECOND)
                .into_iter()
                .filter(|e| e.event_type == EventType::ObservabilityAlertTriggered),
        );
    }
    assert_eq!(counters.analytics.windows_closed.load(std::sync::atomic::Ordering::Relaxed), 600);
    let subjects: Vec<String> =
        alerts.iter().map(|e| format!("{} {:?}", e.event_subtype, e.context.parameters)).collect();
    assert!(subjects.is_empty(), "{subjects:#?}");
}

#[test]
fn sliding_windows_merge_their_panes_count_each_loss_once_and_export_each_event_once() {
    let config =
        AnalyseConfig { enabled: true, window_secs: 3, slide_secs: Some(1), ..AnalyseConfig::default() };
    let (mut stage, counters) = stage(config);
    let mut events: Vec<SemanticEvent> = (0..5).map(|i| event("/s/a", "c", 10 * SECOND + i, 1_000)).collect();
    events.extend((0..7).map(|i| event("/s/b", "c", 11 * SECOND + i, 9_000_000)));
    let mut gap = event("/", "x", 11 * SECOND + 500, 0);
    gap.context.gap = Some(GapContext {
        count: 3,
        lost_from_ns: 11 * SECOND,
        lost_to_ns: 11 * SECOND + 9,
        ..GapContext::default()
    });
    gap.result = None;
    events.push(gap.clone());
    // A second gap spans seconds 11 and 12 (second 12 has no event at all).
    gap.timestamp.monotonic_ns = 10 * SECOND + 900;
    gap.context.gap = Some(GapContext {
        count: 4,
        lost_from_ns: 11 * SECOND + 900_000_000,
        lost_to_ns: 12 * SECOND + 200_000_000,
        ..GapContext::default()
    });
    events.push(gap);
    events.extend((0..2).map(|i| event("/s/a", "c", 13 * SECOND + i, 1_000)));
    run(&mut stage, events, 12 * SECOND + 1);
    assert!(frames(&counters).is_empty(), "the first window ends at 13 s");
    run(&mut stage, Vec::new(), 16 * SECOND);
    let frames = frames(&counters);
    let windows: Vec<(u64, u64, u64, u64)> = frames
        .iter()
        .map(|f| {
            let n = |field: &str| f[field].as_u64().unwrap();
            (n("start_ns") / SECOND, n("end_ns") / SECOND, n("events"), n("lost"))
        })
        .collect();
    // Window [10, 13) holds seconds 10 to 12: 5 + 7 events and the two gap events; [11, 14) 7 + 1
    // + 2. Each gap is counted once in each window it overlaps, the one spanning two panes too.
    assert_eq!(windows, [(10, 13, 14, 7), (11, 14, 10, 7), (12, 15, 2, 4), (13, 16, 2, 0)]);
    assert!(frames.iter().all(|f| f["window_secs"] == 3 && f["slide_secs"] == 1));
    assert_eq!(frames[0]["top"]["path"][0]["key"], "/s/b");
    assert_eq!(
        (frames[1]["top"]["path"][1]["key"].as_str(), frames[1]["top"]["path"][1]["count"].as_u64()),
        (Some("/s/a"), Some(2))
    );
    assert_eq!(frames[0]["slowest"][0]["path"], "/s/b", "the slowest operations of both panes");
    assert_eq!(frames[0]["operations"][0]["count"], 12);
    let exported: u64 = counters
        .analytics
        .latency_histograms()
        .iter()
        .filter(|h| h.family == "operation")
        .map(|h| h.count)
        .sum();
    assert_eq!(exported, 14, "each event once in /metrics, not once per window holding it");
    let totals = frames[3]["top_total"]["path"].as_array().unwrap();
    let a = totals.iter().find(|row| row["key"] == "/s/a").unwrap();
    assert_eq!(a["count"], 7, "the top since start is fed once per pane, not once per window");
    run(&mut stage, vec![event("/s/a", "c", 12 * SECOND, 1)], 16 * SECOND + 1);
    assert_eq!(stage.late_events, 1, "an event in a closed pane is late");
}

#[test]
fn a_fuse_daemons_time_is_a_series_per_mount_and_handler() {
    use vexevent_common::fuse_opcode::{LOOKUP, WRITE};
    let (mut stage, counters) = stage(AnalyseConfig { enabled: true, ..AnalyseConfig::default() });
    let request = |opcode: u32, received: u64, replied: Option<u64>| crate::event::FuseRequest {
        connection: 57,
        opcode,
        daemon_received_ns: Some(received),
        daemon_replied_ns: replied,
        ..crate::event::FuseRequest::default()
    };
    let mut write = event("/f/a", "app", 10 * SECOND, 90_000);
    // A write served by LOOKUP then WRITE (2 and 40 us in the daemon), another WRITE of 60 us,
    // and a request whose reply was not seen (no daemon time).
    write.context.fuse = vec![request(LOOKUP, 100, Some(2_100)), request(WRITE, 5_000, Some(45_000))];
    let mut second = event("/f/a", "app", 10 * SECOND + 10, 90_000);
    second.context.fuse = vec![request(WRITE, 0, Some(60_000)), request(WRITE, 7, None)];
    run(&mut stage, vec![write, second], 11 * SECOND);
    let [frame] = frames(&counters).try_into().unwrap();
    let rows: Vec<(&str, u64, u64)> = frame["daemon_functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["count"].as_u64().unwrap(), r["max_us"].as_u64().unwrap()))
        .collect();
    assert_eq!(rows, [("57:WRITE", 2, 60), ("57:LOOKUP", 1, 2)], "busiest first");
    let exported: Vec<(String, u64)> = counters
        .analytics
        .latency_histograms()
        .into_iter()
        .filter(|h| h.family == "daemon_function")
        .map(|h| (h.label, h.count))
        .collect();
    assert_eq!(exported, [("57:LOOKUP".to_owned(), 1), ("57:WRITE".to_owned(), 2)]);
}
