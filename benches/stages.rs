//! Per-stage cost in userspace (criterion): decoding a ring record, translating it into a `VexFS`
//! semantic event (an fd-based write, an open and an `O_CREAT` open the kernel described: inode,
//! mode, whether it created the file), evaluating a 10-clause filter, routing through 20 routes, and serializing the
//! event as a JSON line; then the pipeline `vexevent run` builds (`app::build_pipeline`), per
//! event, on its own thread: kernel source (translate) -> correlate -> filter -> sequence -> route
//! (serialize once) -> the queues and workers of four null sinks, for batches of decoded records
//! (decoding is the drainer's, measured above). Two inputs: every event reaches the sinks
//! (`all_events`), and the 10-clause filter passes half of them (`half_filtered`).
//! Run: `cargo bench --bench stages`.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    hint::black_box,
    os::unix::ffi::OsStrExt,
    sync::Arc,
    time::Instant,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vexevent::{
    app::build_pipeline,
    capture::{Batch, decode, encode, syscall_body},
    config::Config,
    event::USER_OPS,
    event::{Run, WatchScope},
    expr::Filter,
    route::{Balance, BalanceKey, RouteSpec, Router},
    sinks::Sinks,
    telemetry::Counters,
    translate::{KernelSource, TranslateOptions, Translator, VexfsRoots},
};
use vexevent_common::{COMM_LEN, OpenFile, RecordBody, RecordHeader, SYSCALL_ARGS, SYSCALLS, record_flags};

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

/// A syscall record's body as the probes write it for a successful open: the new file's key,
/// inode number and mode.
fn opened_body(args: [u64; SYSCALL_ARGS], inode: u64) -> RecordBody {
    // SAFETY: `syscall_body` writes the syscall variant.
    let mut body = unsafe { syscall_body(args).syscall };
    body.file = OpenFile { key: 0xffff_8880_0000_1000, inode, mode: 0o100_644, padding: 0 };
    RecordBody { syscall: body }
}

/// Encoded records of an open, a write through its fd and an `O_CREAT` open of a real file, as
/// the probes write them (the opens carry what the kernel said of the new file).
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
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).expect("file"));
    let described = |syscall, ret, flags| RecordHeader { flags, ..header(syscall, ret) };
    Records {
        open: encode(
            &described("openat", 7, record_flags::FILE_INFO),
            &opened_body([AT_FDCWD, 0, 0, 0, 0, 0], inode),
            path,
            None,
        ),
        write: encode(&header("write", 4096), &syscall_body([7, 0, 4096, 0, 0, 0]), b"", None),
        create: encode(
            &described("openat", 8, record_flags::FILE_INFO | record_flags::FILE_CREATED),
            &opened_body([AT_FDCWD, 0, o_creat, 0o644, 0, 0], inode),
            path,
            None,
        ),
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
const TEN_CLAUSES: &str = r#"type in [FilesystemWrite, FilesystemCreate] and category == filesystem and pid > 0
    and uid >= 0 and comm != "nobody" and ok == true and bytes >= 1 and flags has 0x04 and priority <= 3
    and not path matches "\.log$""#;

fn ten_clauses() -> Filter {
    Filter::new("bench", TEN_CLAUSES, &BTreeMap::new()).expect("valid filter")
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
    group.bench_function("translate_open", |b| {
        b.iter(|| {
            events.clear();
            translator.translate_captured(black_box(&open_record), &mut events, &counters);
        });
    });
    group.bench_function("translate_open_creating", |b| {
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
            vexevent::pipeline::write_event(black_box(&event), &mut line).expect("serializable");
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

/// The pipeline `vexevent run` builds, per event, for batches of opens and writes.
fn pipeline(c: &mut Criterion) {
    let Records { open, write, _dir, .. } = records();
    let raw: Vec<&Vec<u8>> = (0..PIPELINE_BATCH).map(|i| if i % 2 == 0 { &open } else { &write }).collect();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(PIPELINE_BATCH as u64));
    for (name, filtered) in [("all_events_to_4_null_sinks", false), ("half_filtered_to_4_null_sinks", true)] {
        let config = Config::from_toml(&pipeline_config(filtered)).expect("valid TOML");
        let settings = config.validate().expect("valid");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let counters = Arc::new(Counters::default());
                let sinks = Sinks::start(&settings.outputs.sinks, &counters).expect("null sinks");
                let (batches, captured) = crossbeam_channel::unbounded();
                for _ in 0..iters {
                    let records = raw.iter().map(|r| decode(r).expect("valid")).collect();
                    batches.send(Batch { records, watermark_ns: 0 }).expect("open channel");
                }
                drop(batches);
                let source = KernelSource::new(captured, translator(), Arc::clone(&counters));
                let (_, compiled) = config.build().expect("valid");
                let run = Run::new(settings.node.clone());
                let pipeline =
                    build_pipeline(Box::new(source), &settings, compiled, &run, sinks, None, &counters)
                        .expect("no react stage: nothing to open");
                let started = Instant::now();
                pipeline.run(&crossbeam_channel::never());
                started.elapsed()
            });
        });
    }
    group.finish();
}

/// Four null sinks (large queues, backpressure), the twenty routes of [`ROUTES`] over them, and
/// optionally the 10-clause filter, as a configuration file.
fn pipeline_config(filtered: bool) -> String {
    let mut toml = String::new();
    if filtered {
        writeln!(toml, "[filter]\nexpressions = [{TEN_CLAUSES:?}]").expect("string");
    }
    for n in 0..4 {
        writeln!(toml, "[sinks.null{n}]\ntype = \"null\"\nqueue = 65536\nbatch_events = 4096")
            .expect("string");
    }
    for (i, expr) in ROUTES.iter().enumerate() {
        let balance = if i % 3 == 0 { "key" } else { "all" };
        writeln!(
            toml,
            "[[routes]]\nname = \"r{i}\"\nmatch = {expr:?}\ntargets = [\"null{}\", \"null{}\"]\nbalance = \"{balance}\"\nfailover = {}",
            i % 4,
            (i + 1) % 4,
            i % 2 == 0
        )
        .expect("string");
    }
    toml.push_str("[routing]\nunmatched = [\"null3\"]\n");
    toml
}

/// Events per iteration of the pipeline benchmark.
const PIPELINE_BATCH: usize = 1024;

/// The twenty [`ROUTES`] over four outputs.
fn twenty_routes() -> Router {
    let routes: Vec<RouteSpec> = ROUTES
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

/// Twenty route expressions of the kinds users write (types, path prefixes and globs, processes,
/// errors); the benchmark's write event matches a few of them, so most are evaluated to the end.
const ROUTES: [&str; 20] = [
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

criterion_group!(benches, stages, pipeline);
criterion_main!(benches);
