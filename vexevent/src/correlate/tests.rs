//! The correlate stage on synthetic events.

use super::*;
use crate::event::{Context, EventType, FilesystemContext, FuseRequest, KernelContext, OpResult, PathBytes};

fn options() -> CorrelateOptions {
    CorrelateOptions { window: Duration::from_millis(20), include_metadata: false, raw_boundaries: false }
}

fn syscall(tid: u32, enter: u64, exit: u64, ok: bool) -> SemanticEvent {
    let mut event = SemanticEvent::sample(EventType::FilesystemCreate, "/f/x", 1, "t", ok);
    event.process.as_mut().unwrap().tid = tid;
    event.timestamp.monotonic_ns = exit;
    event.duration_ns = exit - enter;
    event
}

fn request(
    tid: u32,
    opcode_name: &str,
    queued: u64,
    ended: u64,
    error: i32,
    metadata: bool,
) -> SemanticEvent {
    let mut event = syscall(tid, queued, ended, error == 0);
    event.event_subtype = format!("FUSE_{opcode_name}");
    event.priority = if metadata { Priority::Background } else { Priority::Normal };
    event.context = Context {
        fuse: vec![FuseRequest {
            opcode_name: opcode_name.into(),
            requester_tid: tid,
            queued_ns: queued,
            ended_ns: ended,
            error,
            ..FuseRequest::default()
        }],
        ..Context::default()
    };
    event
}

fn run(events: Vec<SemanticEvent>, options: CorrelateOptions) -> (Vec<SemanticEvent>, Counters) {
    let counters = Counters::default();
    let mut correlator = Correlator::new(options);
    let mut out = Vec::new();
    for event in events {
        correlator.push(event, 0, &counters);
    }
    correlator.flush(&mut out, &counters);
    (out, counters)
}

#[test]
fn requests_within_a_syscall_fold_into_it_with_a_timeline() {
    let events = vec![
        request(7, "LOOKUP", 110, 150, 0, true),
        request(7, "CREATE", 160, 200, 0, false),
        syscall(7, 100, 230, true),
    ];
    let (out, counters) = run(events, options());
    assert_eq!(out.len(), 1);
    let event = &out[0];
    let names: Vec<&str> = event.context.fuse.iter().map(|r| r.opcode_name.as_str()).collect();
    assert_eq!(names, ["LOOKUP", "CREATE"]);
    let timeline = event.timeline.unwrap();
    assert_eq!((timeline.before_fuse_ns, timeline.fuse_ns, timeline.after_fuse_ns), (10, 90, 30));
    assert_eq!(timeline.before_fuse_ns + timeline.fuse_ns + timeline.after_fuse_ns, event.duration_ns);
    assert_eq!(counters.fuse_joined.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn unclaimed_requests_stand_alone_in_order_and_metadata_is_left_out() {
    let events = vec![
        request(9, "WRITE", 10, 20, 0, false),  // writeback: no caller
        request(9, "GETATTR", 30, 40, 0, true), // metadata, no caller
        request(7, "UNLINK", 110, 150, -2, false),
        syscall(7, 100, 160, false),
        syscall(8, 170, 180, true),
    ];
    let (out, _) = run(events, options());
    let kinds: Vec<&str> = out.iter().map(|e| e.event_subtype.as_str()).collect();
    assert_eq!(kinds, ["FUSE_WRITE", "openat", "openat"]);
    assert_eq!(out[1].context.fuse[0].error, -2, "the failed request is folded into its caller");
}

#[test]
fn a_failed_standalone_request_gets_its_error_companion() {
    let (out, _) = run(vec![request(9, "READ", 10, 20, -5, false)], options());
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].event_type, EventType::ObservabilityErrorReported);
    assert_eq!(out[1].parent_event_id, Some(out[0].event_id));
}

#[test]
fn raw_boundaries_keep_every_request_and_still_join() {
    let raw = CorrelateOptions { raw_boundaries: true, ..options() };
    let (out, _) = run(vec![request(7, "CREATE", 110, 150, 0, false), syscall(7, 100, 160, true)], raw);
    let kinds: Vec<&str> = out.iter().map(|e| e.event_subtype.as_str()).collect();
    assert_eq!(kinds, ["FUSE_CREATE", "openat"]);
    assert_eq!(out[1].context.fuse.len(), 1);
}

#[test]
fn a_pending_request_holds_the_stream_back_at_most_the_window() {
    let counters = Counters::default();
    let mut correlator = Correlator::new(options());
    correlator.push(request(9, "WRITE", 1_000, 2_000, 0, false), 0, &counters);
    correlator.push(syscall(8, 2_100, 2_200, true), 0, &counters);
    let mut out = Vec::new();
    correlator.drain(2_300, &mut out, &counters);
    assert!(out.is_empty(), "the request may still be claimed");
    correlator.drain(2_000 + 20_000_000, &mut out, &counters);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].event_subtype, "FUSE_WRITE");
}

#[test]
fn a_lagging_pipeline_still_gives_callers_the_window_from_arrival() {
    let counters = Counters::default();
    let mut correlator = Correlator::new(options());
    let arrived = 50_000_000;
    correlator.push(request(9, "WRITE", 1_000, 2_000, 0, false), arrived, &counters);
    let mut out = Vec::new();
    correlator.drain(2_000 + 20_000_001, &mut out, &counters);
    assert!(out.is_empty(), "the window runs from arrival, not from the kernel's timestamp");
    correlator.push(syscall(9, 900, 2_100, true), arrived, &counters);
    correlator.drain(arrived + 1, &mut out, &counters);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].context.fuse.len(), 1, "joined to its caller");
}

#[test]
fn requests_with_a_known_path_still_fold_into_their_syscall() {
    let mut lookup = request(7, "LOOKUP", 110, 150, -2, true);
    lookup.context.filesystem =
        Some(FilesystemContext { path: Some(PathBytes::from("/f/x")), ..Default::default() });
    let (out, _) = run(vec![lookup, syscall(7, 100, 230, true)], options());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].context.fuse.len(), 1);
}

#[test]
fn the_stage_keeps_order_across_batches_whether_or_not_it_holds_requests() {
    let counters = Arc::new(Counters::default());
    let mut stage = CorrelateStage::new(options(), Arc::clone(&counters));
    let ids = |batch: &EventBatch| batch.events.iter().map(|e| e.event_id).collect::<Vec<_>>();
    // Nothing held: plain events pass; a pending request holds back the events behind it only.
    let (a, b) = (syscall(1, 10, 20, true), syscall(2, 30, 40, true));
    let pending = request(9, "WRITE", 50, 60, 0, false);
    let c = syscall(3, 70, 80, true);
    let expected_now = vec![a.event_id, b.event_id];
    let mut batch = EventBatch::default();
    batch.events = vec![a, b, pending, c.clone()];
    stage.process(&mut batch);
    assert_eq!(ids(&batch), expected_now);
    // Held: the next batch's events queue behind the request; its caller claims it.
    let claimer = syscall(9, 45, 65, true);
    batch.clear();
    batch.events.push(claimer.clone());
    stage.process(&mut batch);
    assert_eq!(ids(&batch), vec![c.event_id, claimer.event_id]);
    assert_eq!(batch.events[1].context.fuse.len(), 1, "the request folded into its caller");
    let d = syscall(4, 90, 95, true);
    batch.clear();
    batch.events.push(d.clone());
    stage.process(&mut batch);
    assert_eq!(ids(&batch), vec![d.event_id]);
}

/// A kernel-function event of thread `tid` that ran from `enter` to `exit` inside a syscall
/// entered at `syscall_enter`.
fn function(tid: u32, name: &str, enter: u64, exit: u64, syscall_enter: u64) -> SemanticEvent {
    let mut event = syscall(tid, enter, exit, true);
    event.event_type = EventType::FilesystemMkdir;
    event.event_subtype = name.into();
    event.result = Some(OpResult { ok: true, ret: 0, error: None });
    event.context = Context {
        kernel: Some(KernelContext {
            hook: "fentry".into(),
            name: name.into(),
            syscall: Some("mkdir".into()),
            syscall_enter_ns: Some(syscall_enter),
            ..KernelContext::default()
        }),
        ..Context::default()
    };
    event
}

#[test]
fn calls_inside_a_syscall_are_listed_in_its_event_and_stay_events() {
    let events = vec![
        // A call in an earlier syscall whose event never came (out of the watch).
        function(7, "vfs_unlink", 20, 30, 10),
        function(7, "vfs_mkdir", 120, 150, 100),
        // Another thread's call and FUSE request; the call does not take the request.
        function(8, "vfs_rmdir", 125, 135, 110),
        request(8, "RMDIR", 126, 134, 0, false),
        syscall(7, 100, 200, true),
        syscall(8, 110, 140, true),
    ];
    let (out, counters) = run(events, options());
    assert_eq!(out.len(), 5, "every call stays an event of its own: {out:?}");
    let mkdir = &out[3];
    assert_eq!(
        mkdir.context.kernel_calls,
        [KernelCall {
            hook: "fentry".into(),
            name: "vfs_mkdir".into(),
            event_type: EventType::FilesystemMkdir,
            enter_ns: 120,
            exit_ns: 150,
            ret: Some(0),
        }]
    );
    let rmdir = &out[4];
    assert_eq!(rmdir.context.kernel_calls[0].name, "vfs_rmdir");
    assert_eq!(rmdir.context.fuse.len(), 1, "the syscall, not the call, takes the FUSE request");
    assert_eq!(counters.kernel_calls_joined.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn calls_whose_syscall_never_comes_are_let_go_after_their_wait() {
    let counters = Counters::default();
    let mut correlator = Correlator::new(options());
    correlator.push(function(7, "vfs_mkdir", 120, 150, 100), 1_000, &counters);
    let mut out = Vec::new();
    // Past the FUSE window, the call still waits (the consumer may lag between batches).
    correlator.drain(1_000 + 20_000_000, &mut out, &counters);
    assert_eq!((out.len(), correlator.calls.len()), (1, 1));
    let wait = u64::try_from(CALL_WAIT.as_nanos()).unwrap();
    correlator.drain(1_000 + wait, &mut out, &counters);
    assert!(correlator.calls.is_empty());
}

#[test]
fn the_stage_joins_a_call_to_its_syscall_in_a_later_batch() {
    let counters = Arc::new(Counters::default());
    let mut stage = CorrelateStage::new(options(), Arc::clone(&counters));
    let mut batch = EventBatch::default();
    batch.events = vec![syscall(1, 10, 20, true), function(7, "vfs_mkdir", 120, 150, 100)];
    stage.process(&mut batch);
    assert_eq!(batch.events.len(), 2, "nothing held back");
    batch.clear();
    batch.events.push(syscall(7, 100, 200, true));
    stage.process(&mut batch);
    assert_eq!(batch.events[0].context.kernel_calls[0].name, "vfs_mkdir");
}
