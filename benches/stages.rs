//! Per-stage cost in userspace (criterion): decoding a ring record, translating it into a `VexFS`
//! semantic event (an fd-based write, a repeated open whose stat is cached, an `O_CREAT` open that
//! must stat), evaluating a 10-clause filter, and serializing the event
//! as a JSON line. Run: `cargo bench --bench stages`.

use std::{collections::HashSet, hint::black_box, os::unix::ffi::OsStrExt};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vexevent::{
    capture::{decode, encode},
    config::USER_OPS,
    event::WatchScope,
    filter::Filter,
    telemetry::Counters,
    translate::{TranslateOptions, Translator, VexfsRoots},
};
use vexevent_common::{COMM_LEN, RecordHeader, SYSCALLS};

fn header(syscall: &str, args: [u64; 6], ret: i64) -> RecordHeader {
    let entry = SYSCALLS.iter().find(|e| e.name == syscall).expect("syscall in table");
    RecordHeader {
        enter_ns: 1_000,
        exit_ns: 2_000,
        ret,
        args,
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

fn stages(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bench.txt");
    std::fs::write(&file, b"x").expect("file");
    let path = file.as_os_str().as_bytes();
    let open = encode(&header("openat", [AT_FDCWD, 0, 0, 0, 0, 0], 7), path, None);
    let write = encode(&header("write", [7, 0, 4096, 0, 0, 0], 4096), b"", None);
    let o_creat = u64::try_from(libc::O_CREAT).expect("flag");
    let create = encode(&header("openat", [AT_FDCWD, 0, o_creat, 0o644, 0, 0], 8), path, None);
    let options = TranslateOptions {
        scope: WatchScope::new(vec![]),
        ops: USER_OPS.into_iter().collect::<HashSet<_>>(),
        fuse_mounts: Vec::new(),
        vexfs: VexfsRoots::default(),
    };
    let counters = Counters::default();

    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_open_record", |b| b.iter(|| decode(black_box(&open)).expect("valid")));
    let open_record = decode(&open).expect("valid");
    let create_record = decode(&create).expect("valid");
    let write_record = decode(&write).expect("valid");
    let mut translator = Translator::new(options);
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
    // A 10-clause filter over the write event (it matches: every clause is evaluated).
    let ten_clauses = Filter::new(
        "bench",
        r#"type in [FilesystemWrite, FilesystemCreate] and category == filesystem and pid > 0 and uid >= 0
           and comm != "nobody" and ok == true and bytes >= 1 and flags has 0x04 and priority <= 3
           and not path matches "\.log$""#,
        &std::collections::BTreeMap::new(),
    )
    .expect("valid filter");
    assert!(ten_clauses.matches(&event));
    group.bench_function("filter_10_clauses", |b| b.iter(|| ten_clauses.matches(black_box(&event))));
    group.bench_function("serialize_json_line", |b| {
        b.iter(|| {
            line.clear();
            serde_json::to_writer(&mut line, black_box(&event)).expect("serializable");
        });
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
