//! The rule engine of the `react` stage (criterion, time per event): one simple count rule over
//! renames (the plan's "simple rule" figure), and 1,000 rules (count, distinct count, sequence,
//! absence; 250 each, spread over 8 event types and 1,000 directories) over events from
//! 100,000 keys (pids), with the watermark following the events as in a live run.
//! Run: `cargo bench --bench rules`.

use std::{fmt::Write as _, hint::black_box, time::Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vexevent::{
    config::Config,
    event::{EventType, SemanticEvent},
    react::Engine,
    telemetry::RuleTable,
};

const TYPES: [&str; 8] = [
    "FilesystemCreate",
    "FilesystemDelete",
    "FilesystemWrite",
    "FilesystemRename",
    "FilesystemChmod",
    "FilesystemTruncate",
    "FilesystemMkdir",
    "FilesystemRead",
];
const KEYS: u32 = 100_000;
const BATCH: usize = 10_000;

fn engine(rules: &str) -> (Engine, RuleTable) {
    let config = Config::from_toml(rules).expect("rules parse");
    let table = RuleTable::default();
    (Engine::new(&config.react_settings().expect("rules"), &table).expect("rules compile"), table)
}

/// 1,000 rules: `i % 4` picks the pattern, `i % 8` the event type, `i` the directory.
fn thousand_rules() -> String {
    let mut text = String::new();
    for i in 0..1_000 {
        let kind = TYPES[i % TYPES.len()];
        let condition = format!(r#"type == {kind} and path prefix "/srv/d{i}/""#);
        let _ = match i % 4 {
            0 => write!(
                text,
                "[[rules]]\nname = \"r{i}\"\nkind = \"count\"\nmatch = '{condition}'\nat_least = 50\nwithin_ms = 1000\n"
            ),
            1 => write!(
                text,
                "[[rules]]\nname = \"r{i}\"\nkind = \"distinct\"\nmatch = '{condition}'\nat_least = 50\nwithin_ms = 1000\n"
            ),
            2 => write!(
                text,
                "[[rules]]\nname = \"r{i}\"\nkind = \"sequence\"\nwithin_ms = 1000\nsteps = [{{ name = \"a\", match = '{condition}' }}, {{ name = \"b\", match = 'type == FilesystemRename and path == a.path' }}]\n"
            ),
            _ => write!(
                text,
                "[[rules]]\nname = \"r{i}\"\nkind = \"absence\"\nmatch = '{condition}'\nfollowed_by = 'type == FilesystemDelete and path prefix \"/srv/d{i}/\"'\nwithin_ms = 1000\n"
            ),
        };
    }
    text
}

/// Events of every type, from `KEYS` pids, across the rules' directories (each matches the
/// rules of its type and directory), 1 us apart.
fn events() -> Vec<SemanticEvent> {
    let mut template =
        serde_json::from_str::<SemanticEvent>(include_str!("rules_event.json")).expect("event");
    (0..KEYS as usize)
        .map(|i| {
            let kind = EventType::from_name(TYPES[i % TYPES.len()]).expect("type");
            template.event_type = kind;
            template.event_type_code = kind.code();
            template.event_id = i as u64;
            template.process.as_mut().expect("process").pid = u32::try_from(i).expect("pid");
            let dir = (i * 7) % 1_000;
            template.context.filesystem.as_mut().expect("fs").path =
                Some(format!("/srv/d{dir}/f{}", i % 64).as_str().into());
            template.clone()
        })
        .collect()
}

/// Time per event of `engine` over `events`, restamped to keep time moving forward.
fn measure(c: &mut Criterion, name: &str, mut engine: Engine, mut events: Vec<SemanticEvent>) {
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut now_ns = 0_u64;
    let mut next = 0;
    let mut out = Vec::new();
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let started = Instant::now();
            for _ in 0..iterations {
                let batch = &mut events[next..next + BATCH];
                for event in batch.iter_mut() {
                    now_ns += 1_000;
                    event.timestamp.monotonic_ns = now_ns;
                }
                engine.process(batch, now_ns, &mut out);
                black_box(out.len());
                out.clear();
                next = (next + BATCH) % events.len();
            }
            started.elapsed()
        });
    });
    group.finish();
    eprintln!("rules/{name}: state held at the end: {} keys and partial matches", engine.held());
}

fn bench(c: &mut Criterion) {
    let simple = r#"
[[rules]]
name = "locker"
kind = "count"
match = 'type == FilesystemRename and target glob "**/*.locked"'
at_least = 200
within_ms = 1000
"#;
    let (simple, _) = engine(simple);
    measure(c, "one_simple_rule", simple, events());
    let (many, _) = engine(&thousand_rules());
    measure(c, "1000_rules_100k_keys", many, events());
}

criterion_group!(benches, bench);
criterion_main!(benches);
