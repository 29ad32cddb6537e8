//! Per-stage cost in userspace (criterion): decoding a ring record, translating it into a `VexFS`
//! semantic event (an fd-based write, a repeated open whose stat is cached, an `O_CREAT` open that
//! must stat), evaluating a 10-clause filter, routing through 20 routes, and serializing the
//! event as a JSON line; then the whole userspace path per event: decode -> translate -> filter
//! -> route -> serialize -> the queues and workers of four null sinks. Run: `cargo bench --bench stages`.

use std::{
    collections::{BTreeMap, HashSet},
    hint::black_box,
    os::unix::ffi::OsStrExt,
    sync::Arc,
    time::Duration,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vexevent::{
    capture::{decode, encode, syscall_body},
    config::USER_OPS,
    event::{SemanticEvent, WatchScope},
    filter::Filter,
    route::{Balance, BalanceKey, RouteSpec, Router},
    sinks::{Delivery, Destination, Queued, SinkSpec, Sinks, WhenFull, to_json_lines},
    telemetry::Counters,
    translate::{TranslateOptions, Translator, VexfsRoots},
};
use vexevent_common::{COMM_LEN, RecordHeader, SYSCALLS};

fn header(syscall: &str, ret: i64) -> RecordHeader {
    let entry = SYSCALLS.iter().find(|e| e.name == syscall).expect("syscall in table");
    RecordHeader {
        enter_ns: 1_000,
        exit_ns: 2_000,
        ret,
        pid: std::process::id(),
        tid: std::process::id(),
        syscall_nr: entry.nr,
        op: entry.spec.op,
        comm: [b'b'; COMM_LEN],
        ..RecordHeader::ZEROED
    }
}

/// `AT_FDCWD` as a zero-extended syscall argument.
const AT_FDCWD: u64 = 0xffff_ff9c;

/// Encoded records of an open, a write through its fd and an `O_CREAT` open of a real file.
struct Records {
    open: Vec<u8>,
    write: Vec<u8>,
    create: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn records() -> Records {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bench.txt");
    std::fs::write(&file, b"x").expect("file");
    let path = file.as_os_str().as_bytes();
    let o_creat = u64::try_from(libc::O_CREAT).expect("flag");
    Records {
        open: encode(&header("openat", 7), &syscall_body([AT_FDCWD, 0, 0, 0, 0, 0]), path, None),
        write: encode(&header("write", 4096), &syscall_body([7, 0, 4096, 0, 0, 0]), b"", None),
        create: encode(&header("openat", 8), &syscall_body([AT_FDCWD, 0, o_creat, 0o644, 0, 0]), path, None),
        _dir: dir,
    }
}

fn translator() -> Translator {
    Translator::new(TranslateOptions {
        scope: WatchScope::new(vec![]),
        ops: USER_OPS.into_iter().collect::<HashSet<_>>(),
        fuse_mounts: Vec::new(),
        vexfs: VexfsRoots::default(),
    })
}

/// A 10-clause filter that a write event matches (so every clause is evaluated).
fn ten_clauses() -> Filter {
    Filter::new(
        "bench",
        r#"type in [FilesystemWrite, FilesystemCreate] and category == filesystem and pid > 0 and uid >= 0
           and comm != "nobody" and ok == true and bytes >= 1 and flags has 0x04 and priority <= 3
           and not path matches "\.log$""#,
        &BTreeMap::new(),
    )
    .expect("valid filter")
}

fn stages(c: &mut Criterion) {
    let Records { open, write, create, _dir } = records();
    let counters = Counters::default();

    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_open_record", |b| b.iter(|| decode(black_box(&open)).expect("valid")));
    let open_record = decode(&open).expect("valid");
    let create_record = decode(&create).expect("valid");
    let write_record = decode(&write).expect("valid");
    let mut translator = translator();
    let mut events = Vec::with_capacity(4);
    translator.translate_captured(&open_record, &mut events, &counters);
    group.bench_function("translate_write", |b| {
        b.iter(|| {
            events.clear();
            translator.translate_captured(black_box(&write_record), &mut events, &counters);
        });
    });
    group.bench_function("translate_open_cached_stat", |b| {
        b.iter(|| {
            events.clear();
            translator.translate_captured(black_box(&open_record), &mut events, &counters);
        });
    });
    group.bench_function("translate_open_creating_with_stat", |b| {
        b.iter(|| {
            events.clear();
            translator.translate_captured(black_box(&create_record), &mut events, &counters);
        });
    });
    events.clear();
    translator.translate_captured(&write_record, &mut events, &counters);
    let event = events[0].clone();
    let mut line = Vec::with_capacity(1024);
    let ten_clauses = ten_clauses();
    assert!(ten_clauses.matches(&event));
    group.bench_function("filter_10_clauses", |b| b.iter(|| ten_clauses.matches(black_box(&event))));
    group.bench_function("serialize_json_line", |b| {
        b.iter(|| {
            line.clear();
            serde_json::to_writer(&mut line, black_box(&event)).expect("serializable");
        });
    });
    let mut router = twenty_routes();
    let mut targets = Vec::new();
    let up = |_: usize| true;
    group.bench_function("route_20_routes", |b| {
        b.iter(|| router.route(black_box(&event), &up, &mut targets));
    });
    group.finish();
}

/// The whole userspace path, per event, for a batch of opens and writes.
fn pipeline(c: &mut Criterion) {
    let Records { open, write, _dir, .. } = records();
    let mut translator = translator();
    let ten_clauses = ten_clauses();
    let mut router = twenty_routes();
    let mut targets = Vec::new();
    let up = |_: usize| true;
    let counters = Arc::new(Counters::default());
    let null = |n: usize| SinkSpec {
        name: format!("null{n}"),
        destination: Destination::Null,
        queue: 1 << 16,
        when_full: WhenFull::Block,
        delivery: Delivery {
            batch_events: 4096,
            linger: Duration::ZERO,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(1),
            max_retries: 0,
        },
    };
    // The four outputs the routes name, each a null sink with its queue and worker.
    let sinks = Sinks::start(&(0..4).map(null).collect::<Vec<_>>(), &counters).expect("null sinks");
    let records: Vec<Vec<u8>> =
        (0..PIPELINE_BATCH).map(|i| if i % 2 == 0 { open.clone() } else { write.clone() }).collect();
    let mut translated: Vec<SemanticEvent> = Vec::with_capacity(PIPELINE_BATCH);
    let mut per_sink: Vec<Vec<Queued>> = vec![Vec::new(); sinks.len()];
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(PIPELINE_BATCH as u64));
    group.bench_function("decode_translate_filter_route_null_sink", |b| {
        b.iter(|| {
            translated.clear();
            for raw in &records {
                let record = decode(raw).expect("valid");
                translator.translate_captured(&record, &mut translated, &counters);
            }
            translated.retain(|event| ten_clauses.matches(event));
            let lines = to_json_lines(&translated, &counters);
            for (event, line) in translated.iter().zip(&lines) {
                router.route(event, &up, &mut targets);
                let queued = Queued { line: Arc::clone(line), urgent: false, sequence: 0, monotonic_ns: 0 };
                for &target in &targets {
                    per_sink[target].push(queued.clone());
                }
            }
            for (index, queued) in per_sink.iter_mut().enumerate() {
                sinks.offer(index, queued.drain(..), &counters);
            }
        });
    });
    group.finish();
    sinks.finish();
}

/// Events per iteration of the pipeline benchmark.
const PIPELINE_BATCH: usize = 1024;

/// Twenty routes of the kinds users write (types, path prefixes and globs, processes, errors),
/// over four outputs; the benchmark's write event matches a few of them, so most are evaluated
/// to the end.
fn twenty_routes() -> Router {
    let expressions = [
        "type == FilesystemCreate",
        "type == FilesystemDelete",
        "type in [FilesystemRename, FilesystemHardlink, FilesystemSymlink]",
        "category == vector",
        "category == graph",
        r#"path prefix "/srv/data""#,
        r#"path prefix "/var/lib/vexfs""#,
        r#"path glob "/home/**/*.vec""#,
        r#"path glob "**/_vexfs/*""#,
        r#"comm == "vexfs_fuse""#,
        r#"comm in ["postgres", "redis-server", "nginx"]"#,
        "uid == 1000",
        "ok == false",
        "error == EACCES",
        "priority <= 2",
        "bytes > 1048576",
        r#"path matches "\.(tmp|swp)$""#,
        "type == FilesystemWrite and bytes >= 4096",
        "pid < 100",
        "type == FilesystemWrite",
    ];
    let routes: Vec<RouteSpec> = expressions
        .iter()
        .enumerate()
        .map(|(i, expr)| RouteSpec {
            name: format!("r{i}"),
            match_expr: (*expr).to_owned(),
            targets: vec![i % 4, (i + 1) % 4],
            balance: if i % 3 == 0 { Balance::Key } else { Balance::All },
            key: BalanceKey::Path,
            failover: i % 2 == 0,
        })
        .collect();
    Router::new(&routes, vec![3], 4, &BTreeMap::new()).expect("valid routes")
}

criterion_group!(benches, stages, pipeline);
criterion_main!(benches);
