//! The analyse stage's cost per event (criterion): batches of 1,024 write events on 100,000
//! distinct files (in 1,000 directories, by 100 processes), one event per microsecond of event
//! time, so a one-second window closes every 1,000,000 events with 100,000 live path keys; the
//! cost includes closing windows (summaries, top lists, anomaly baselines, histograms). Two
//! settings: every dimension (path, dir, pid, comm, uid, operation, event type) and the path
//! alone. The stage is timed in the CPU time of its thread (the machine may be shared: time
//! spent waiting for a CPU is not the stage's). Run: `cargo bench --bench analyse`.

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vexevent::{
    analyse::{AnalyseConfig, AnalyseStage, Dimension},
    event::{NodeId, PathBytes, Run, SemanticEvent},
    pipeline::{EventBatch, Stage},
    telemetry::Counters,
};

const KEYS: usize = 100_000;
const BATCH: usize = 1_024;
/// Events generated once and replayed with advancing timestamps.
const EVENTS: usize = 2 * KEYS;

/// A write event as vexevent writes it (read back from its JSON line).
const TEMPLATE: &str = r#"{"event_id":1,"origin":{"id":"bench:0000000000000001:0:0:0"},"event_type":"FilesystemWrite","event_type_code":260,"event_subtype":"write",
"timestamp":{"wall_ns":1,"monotonic_ns":1,"cpu":0,"pid":7,"sequence":0},"global_sequence":0,"local_sequence":0,
"flags":92,"priority":3,"event_size":300,"event_version":1,"context":{"filesystem":{"path":"/x","fd":3,"bytes":4096}},
"process":{"pid":7,"tid":7,"uid":1000,"gid":1000,"comm":"writer"},"result":{"ok":true,"ret":4096},"duration_ns":5000}"#;

fn events() -> Vec<SemanticEvent> {
    let template: SemanticEvent = serde_json::from_str(&TEMPLATE.replace('\n', "")).expect("a valid event");
    (0..EVENTS)
        .map(|i| {
            let mut event = template.clone();
            let key = (i * 7_919) % KEYS;
            event.context.filesystem.as_mut().unwrap().path =
                Some(PathBytes::from(format!("/data/dir{:04}/file{key:06}.bin", key % 1_000).as_str()));
            let process = event.process.as_mut().unwrap();
            process.pid = 1_000 + u32::try_from(key % 100).unwrap();
            process.comm = PathBytes::from(format!("writer{}", key % 10).as_str());
            event.duration_ns = 1_000 + (key as u64 % 50) * 100;
            event
        })
        .collect()
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let done = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    assert_eq!(done, 0, "the thread's CPU clock reads");
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// Runs `iters` batches through `stage`, timing only the stage (in CPU time).
fn run(stage: &mut AnalyseStage, events: &mut [SemanticEvent], next_ns: &mut u64, iters: u64) -> Duration {
    let mut batch = EventBatch::default();
    let mut spent = Duration::ZERO;
    let mut at = 0;
    for _ in 0..iters {
        batch.clear();
        for event in &mut events[at..at + BATCH] {
            *next_ns += 1_000;
            event.timestamp.monotonic_ns = *next_ns;
            event.timestamp.wall_ns = *next_ns;
        }
        batch.events.extend_from_slice(&events[at..at + BATCH]);
        batch.watermark_ns = *next_ns;
        at = (at + BATCH) % (EVENTS - BATCH);
        let started = thread_cpu();
        stage.process(black_box(&mut batch));
        spent += thread_cpu().saturating_sub(started);
    }
    spent
}

fn analyse(c: &mut Criterion) {
    let mut events = events();
    let mut group = c.benchmark_group("analyse");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, dimensions) in [
        ("all_dimensions_100k_paths", Dimension::ALL.to_vec()),
        ("path_only_100k_paths", vec![Dimension::Path]),
    ] {
        let config = AnalyseConfig {
            enabled: true,
            max_keys: 2 * KEYS,
            anomaly: vexevent::analyse::AnomalyConfig {
                dimensions: vec![Dimension::Path],
                max_keys: KEYS,
                ..Default::default()
            },
            dimensions,
            ..AnalyseConfig::default()
        };
        let mut stage = AnalyseStage::new(config, Run::new(NodeId::host()), Arc::new(Counters::default()));
        let mut next_ns = 1_000_000_000;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| run(&mut stage, &mut events, &mut next_ns, iters));
        });
    }
    group.finish();
}

criterion_group!(benches, analyse);
criterion_main!(benches);
