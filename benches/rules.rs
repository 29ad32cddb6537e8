//! The rule engine of the `react` stage (criterion, time per event): one simple count rule over
//! renames (the plan's "simple rule" figure), and 1,000 rules (count, distinct count, sequence,
//! absence; 250 each, spread over 8 event types and 1,000 directories) over events from
//! 100,000 keys (pids), with the watermark following the events as in a live run. Before them it
//! prints the memory a sequence's partial match and an absence's pending event hold (live heap
//! bytes, counted by this bench's allocator, over 10,000 keys).
//! Run: `cargo bench --bench rules`.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    fmt::Write as _,
    hint::black_box,
    sync::atomic::{AtomicBool, AtomicI64, Ordering},
    time::{Duration, Instant},
};

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

/// The system allocator, counting live heap bytes while `COUNTING` is set (memory per partial
/// match; off while timing).
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicI64 = AtomicI64::new(0);

fn count(bytes: usize, sign: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_add(sign * i64::try_from(bytes).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller's new size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

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

fn template() -> SemanticEvent {
    serde_json::from_str::<SemanticEvent>(include_str!("rules_event.json")).expect("event")
}

/// Events of every type, from `KEYS` pids, across the rules' directories (each matches the
/// rules of its type and directory), 1 us apart.
fn events() -> Vec<SemanticEvent> {
    let mut template = template();
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

/// Time per event of `engine` over `events`, restamped (untimed) to keep time moving forward.
fn measure(c: &mut Criterion, name: &str, mut engine: Engine, mut events: Vec<SemanticEvent>) {
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut now_ns = 0_u64;
    let mut next = 0;
    let mut out = Vec::new();
    group.bench_function(name, |b| {
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let batch = &mut events[next..next + BATCH];
                // Untimed: the harness's own work (which also leaves the batch in the cache, as
                // the stages before `react` leave a batch).
                for event in batch.iter_mut() {
                    now_ns += 1_000;
                    event.timestamp.monotonic_ns = now_ns;
                }
                let started = Instant::now();
                engine.process(batch, now_ns, &mut out);
                spent += started.elapsed();
                black_box(out.len());
                out.clear();
                next = (next + BATCH) % events.len();
            }
            spent
        });
    });
    group.finish();
    eprintln!("rules/{name}: state held at the end: {} keys and partial matches", engine.held());
}

/// Live heap bytes per key that `rules` (one rule) holds after `first` started it for 10,000
/// keys (pids, directories), all still open.
fn memory_per_key(name: &str, rules: &str, first: EventType, path: fn(usize) -> String) {
    const STARTED: usize = 10_000;
    let (mut engine, _) = engine(rules);
    let mut template = template();
    template.event_type = first;
    template.event_type_code = first.code();
    let events: Vec<SemanticEvent> = (0..STARTED)
        .map(|i| {
            template.event_id = i as u64;
            template.timestamp.monotonic_ns = 1_000 + i as u64;
            template.process.as_mut().expect("process").pid = u32::try_from(i).expect("pid");
            template.context.filesystem.as_mut().expect("fs").path = Some(path(i).as_str().into());
            template.clone()
        })
        .collect();
    let mut out = Vec::new();
    COUNTING.store(true, Ordering::Relaxed);
    let before = LIVE.load(Ordering::Relaxed);
    engine.process(&events, 0, &mut out);
    let held = LIVE.load(Ordering::Relaxed) - before;
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(engine.held(), STARTED, "every key still open");
    eprintln!(
        "rules/memory: {name}: {} bytes per open key ({STARTED} keys, {held} bytes with the maps)",
        held / i64::try_from(STARTED).expect("a small count")
    );
}

fn bench(c: &mut Criterion) {
    memory_per_key(
        "a sequence's partial match (replace-over)",
        include_str!("../tests/fixtures/rules/replace-over.toml"),
        EventType::FilesystemCreate,
        |i| format!("/srv/d{}/f{i}.tmp", i % 1_000),
    );
    memory_per_key(
        "an absence's pending event (index-upkeep)",
        include_str!("../tests/fixtures/rules/index-upkeep.toml"),
        EventType::FilesystemCreate,
        |i| format!("/srv/d{i}/index.vec"),
    );
    let (simple, _) = engine(include_str!("../tests/fixtures/rules/locker.toml"));
    measure(c, "one_simple_rule", simple, events());
    let (many, _) = engine(&thousand_rules());
    measure(c, "1000_rules_100k_keys", many, events());
}

criterion_group!(benches, bench);
criterion_main!(benches);
