//! Replays a recorded raw stream (ring records as the probes lay them out) through the pipeline
//! `vexevent run` builds, without root: decode -> kernel source (translate) -> correlate ->
//! filter -> sequence -> route, plus a stage the test registers at the end to collect what comes
//! out. Checks that a FUSE request is folded into the syscall that caused it, a gap record
//! becomes a gap event where the loss happened, a corrupt record is rejected and counted, the
//! rest comes out in order, and the pipeline counts every stage under its name.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, atomic::Ordering},
};

use vexevent::{
    app::build_pipeline,
    capture::{Batch, Captured, decode, encode, encode_gap, syscall_body},
    config::Config,
    event::USER_OPS,
    event::{EventType, Run, SemanticEvent, WatchScope},
    pipeline::{EventBatch, Stage},
    sinks::Sinks,
    telemetry::Counters,
    translate::{KernelSource, TranslateOptions, Translator, VexfsRoots},
};
use vexevent_common::{
    COMM_LEN, FuseBody, NOT_A_SYSCALL, OpKind, RecordBody, RecordHeader, SYSCALLS, fuse_opcode,
};

const PID: u32 = 4_000_000;
const AT_FDCWD: u64 = 0xffff_ff9c;

fn header(op: OpKind, nr: u32, seq: u64, enter: u64, exit: u64, ret: i64) -> RecordHeader {
    RecordHeader {
        seq,
        enter_ns: enter,
        exit_ns: exit,
        ret,
        pid: PID,
        tid: PID,
        syscall_nr: nr,
        op: op as u32,
        comm: [b'r'; COMM_LEN],
        ..RecordHeader::ZEROED
    }
}

fn syscall(name: &str, seq: u64, enter: u64, exit: u64, ret: i64, args: [u64; 6], path: &[u8]) -> Vec<u8> {
    let entry = SYSCALLS.iter().find(|e| e.name == name).expect("traced syscall");
    let op = OpKind::try_from(entry.spec.op).expect("op");
    encode(&header(op, entry.nr, seq, enter, exit, ret), &syscall_body(args), path, None)
}

fn fuse_request(seq: u64, queued: u64, ended: u64, opcode: u32) -> Vec<u8> {
    let mut body = RecordBody::ZEROED;
    body.fuse = FuseBody { connection: 53, unique: 9, opcode, ..FuseBody::default() };
    encode(&header(OpKind::FuseRequest, NOT_A_SYSCALL, seq, queued, ended, 0), &body, b"", None)
}

#[test]
fn a_recorded_stream_replays_into_ordered_joined_events() {
    let stream: Vec<Vec<u8>> = vec![
        // A FUSE CREATE queued inside the openat below, then the openat itself.
        fuse_request(0, 1_100, 1_500, fuse_opcode::CREATE),
        syscall("openat", 1, 1_000, 1_600, 3, [AT_FDCWD, 0, 0o101, 0o644, 0, 0], b"/m/f/new.txt"),
        // Records 2..4 lost in the kernel: two writes and a close, from 1 650 to 1 690 ns.
        encode_gap(
            &header(OpKind::Write, 0, 2, 1_700, 1_700, 0),
            (1_650, 1_690),
            &[(OpKind::Write, 2), (OpKind::Close, 1)],
        ),
        syscall("unlinkat", 5, 2_000, 2_100, -2, [AT_FDCWD, 0, 0, 0, 0, 0], b"/m/f/missing"),
        // Garbage: a truncated record.
        vec![1, 2, 3],
    ];
    let counters = Arc::new(Counters::default());
    let translator = Translator::new(TranslateOptions {
        scope: WatchScope::new(vec![b"/m".to_vec()]),
        ops: USER_OPS.into_iter().collect::<HashSet<_>>(),
        fuse_mounts: vec![(53, b"/m/f".to_vec())],
        vexfs: VexfsRoots::default(),
    });
    // What a drain of the rings would hand over: the decoded records, one batch.
    let mut records = Vec::new();
    for bytes in &stream {
        match decode(bytes) {
            Ok(captured) => {
                if let Captured::Gap(gap) = &captured {
                    assert_eq!((gap.first_seq, gap.count), (2, 3));
                    assert_eq!((gap.lost_from_ns, gap.lost_to_ns, gap.reported_ns), (1_650, 1_690, 1_700));
                }
                records.push(captured);
            }
            Err(error) => counters.record_decode_error(error.reason()),
        }
    }
    let (batches, captured) = crossbeam_channel::bounded(1);
    batches.send(Batch { records, watermark_ns: 2_100 }).unwrap();
    drop(batches);

    // The default configuration (no filter, the default 20 ms FUSE join window) with a null
    // output, and one more stage, registered with one line: it collects every event reaching it.
    let (settings, compiled) = Config::from_toml("[sinks.null]\ntype = \"null\"").unwrap().build().unwrap();
    let collected = Arc::new(Mutex::new(Vec::new()));
    let source = KernelSource::new(captured, translator, Arc::clone(&counters));
    let sinks = Sinks::start(&settings.outputs.sinks, &counters).unwrap();
    let pipeline = build_pipeline(
        Box::new(source),
        &settings,
        compiled,
        &Run::new(settings.node.clone()),
        sinks,
        None,
        &counters,
    )
    .unwrap()
    .then(Box::new(Collect(Arc::clone(&collected))));
    assert_eq!(pipeline.graph(), ["kernel", "correlate", "filter", "sequence", "route", "collect"]);
    pipeline.run(&crossbeam_channel::never());
    let out = collected.lock().unwrap();

    let kinds: Vec<(EventType, &str)> =
        out.iter().map(|e| (e.event_type, e.event_subtype.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (EventType::FilesystemCreate, "openat"),
            (EventType::ObservabilityAlertTriggered, "records_lost"),
            (EventType::FilesystemDelete, "unlinkat"),
            (EventType::ObservabilityErrorReported, "unlinkat"),
        ]
    );
    let create = &out[0];
    assert_eq!(create.context.fuse.len(), 1, "the FUSE CREATE is folded into the openat");
    assert_eq!(create.context.fuse[0].opcode_name, "CREATE");
    let timeline = create.timeline.expect("timeline");
    assert_eq!((timeline.before_fuse_ns, timeline.fuse_ns, timeline.after_fuse_ns), (100, 400, 100));
    let gap = out[1].context.gap.as_ref().expect("gap context");
    assert_eq!(gap.lost_by_operation.get("write"), Some(&2));
    assert_eq!(gap.lost_by_operation.get("close"), Some(&1));
    // The loss's own time span, so a window can tell whether it fell inside: after the openat
    // (exit 1 600), before the unlinkat (enter 2 000), reported at 1 700.
    assert_eq!((gap.lost_from_ns, gap.lost_to_ns), (1_650, 1_690));
    assert_eq!(out[1].timestamp.monotonic_ns, 1_700);
    assert!(
        gap.lost_from_ns > out[0].timestamp.monotonic_ns && gap.lost_to_ns < out[2].timestamp.monotonic_ns
    );
    assert_eq!(counters.decode_errors.load(Ordering::Relaxed), 1);
    assert_eq!(counters.fuse_joined.load(Ordering::Relaxed), 1);
    let sequences: Vec<u64> = out.iter().map(|e| e.global_sequence).collect();
    assert_eq!(sequences, [0, 1, 2, 3], "numbered in output order");

    // Every stage is counted under its name: the collecting stage saw all four events, the
    // correlate stage took five (the FUSE request and the openat) and passed four on.
    let stages = counters.stages.summaries();
    assert_eq!((stages["collect"].events_in, stages["collect"].events_out), (4, 4));
    assert_eq!((stages["correlate"].events_in, stages["correlate"].events_out), (5, 4));
    assert_eq!(stages["kernel"].events_out, 5);
    assert_eq!(stages["collect"].position, 5);
    assert_eq!(counters.outputs.sinks()["null"].delivered, 4, "every event reached the output");
}

/// A stage that keeps a copy of every event reaching it.
struct Collect(Arc<Mutex<Vec<SemanticEvent>>>);

impl Stage for Collect {
    fn name(&self) -> &'static str {
        "collect"
    }

    fn process(&mut self, batch: &mut EventBatch) {
        self.0.lock().unwrap().extend(batch.events.iter().cloned());
    }
}
