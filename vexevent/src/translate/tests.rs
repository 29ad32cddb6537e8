//! Translation of synthetic records, without root.

use std::collections::HashSet;

use vexevent_common::{COMM_LEN, OpKind, RecordBody, RecordHeader, record_flags, syscall_by_nr};

use super::*;
use crate::capture::{RawRecord, decode, encode, syscall_body};

const PID: u32 = 3_000_000; // no such process: nothing falls back to /proc

fn translator(ops: &[OpKind]) -> Translator {
    let mut translator = Translator::new(TranslateOptions {
        scope: WatchScope::new(vec![b"/w".to_vec()]),
        ops: ops.iter().copied().collect::<HashSet<_>>(),
        fuse_mounts: Vec::new(),
        vexfs: VexfsRoots(vec![b"/w/vexfs".to_vec()]),
    });
    translator.processes_mut().set_cwd(PID, b"/w/sub".to_vec());
    translator
}

/// A syscall record as the probes would write it, decoded as capture decodes it.
fn record_with(
    syscall: &str,
    body: &RecordBody,
    flags: u32,
    ret: i64,
    path1: Option<&[u8]>,
    path2: Option<&[u8]>,
) -> RawRecord {
    let entry = vexevent_common::SYSCALLS.iter().find(|e| e.name == syscall).unwrap();
    let mut comm = [0u8; COMM_LEN];
    comm[..4].copy_from_slice(b"test");
    let header = RecordHeader {
        seq: 1,
        enter_ns: 10,
        exit_ns: 25,
        ret,
        pid: PID,
        tid: PID + 1,
        uid: 1000,
        gid: 100,
        syscall_nr: entry.nr,
        op: entry.spec.op,
        flags,
        comm,
        ..RecordHeader::ZEROED
    };
    match decode(&encode(&header, body, path1.unwrap_or_default(), path2)).unwrap() {
        Captured::Record(record) => *record,
        Captured::Gap(gap) => panic!("unexpected gap {gap:?}"),
    }
}

fn record(syscall: &str, args: [u64; 6], ret: i64, path1: Option<&[u8]>, path2: Option<&[u8]>) -> RawRecord {
    record_with(syscall, &syscall_body(args), 0, ret, path1, path2)
}

fn run(translator: &mut Translator, record: &RawRecord) -> Vec<SemanticEvent> {
    let mut out = Vec::new();
    translator.translate(record, &mut out, &Counters::default());
    out
}

fn path_of(event: &SemanticEvent) -> Vec<u8> {
    event.context.filesystem.as_ref().unwrap().path.as_ref().unwrap().0.clone()
}

const AT_FDCWD: u64 = 0xffff_ff9c;

#[test]
fn relative_open_resolves_against_cwd_and_fd_ops_use_its_path() {
    let mut t = translator(&OpKind::ALL);
    let open = record("openat", [AT_FDCWD, 0, 0, 0, 0, 0], 5, Some(b"../f.txt"), None);
    let events = run(&mut t, &open);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, EventType::FilesystemRead);
    assert_eq!(path_of(&events[0]), b"/w/f.txt");
    assert_eq!(events[0].duration_ns, 15);
    let open_id = events[0].event_id;
    let write = record("write", [5, 0, 3, 0, 0, 0], 3, None, None);
    let events = run(&mut t, &write);
    assert_eq!(events[0].event_type, EventType::FilesystemWrite);
    assert_eq!(path_of(&events[0]), b"/w/f.txt");
    assert_eq!(events[0].context.filesystem.as_ref().unwrap().bytes, Some(3));
    assert!(events[0].event_id > open_id, "event ids increase");
}

#[test]
fn dirfd_relative_paths_use_the_directory_fd() {
    let mut t = translator(&OpKind::ALL);
    run(&mut t, &record("openat", [AT_FDCWD, 0, 0o200_000, 0, 0, 0], 7, Some(b"/w/dir"), None));
    let events = run(&mut t, &record("mkdirat", [7, 0, 0o755, 0, 0, 0], 0, Some(b"new"), None));
    assert_eq!(events[0].event_type, EventType::FilesystemMkdir);
    assert_eq!(path_of(&events[0]), b"/w/dir/new");
    assert_eq!(events[0].context.filesystem.as_ref().unwrap().mode.as_deref(), Some("755"));
}

#[test]
fn failures_add_an_error_reported_event_linked_to_the_operation() {
    let mut t = translator(&OpKind::ALL);
    t.set_run(crate::event::Run::new(crate::event::NodeId::new("node-1").unwrap()));
    let unlink =
        record("unlinkat", [AT_FDCWD, 0, 0, 0, 0, 0], -i64::from(libc::ENOENT), Some(b"/w/missing"), None);
    let events = run(&mut t, &unlink);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_type, EventType::FilesystemDelete);
    assert_eq!(events[0].result.as_ref().unwrap().error.as_deref(), Some("ENOENT"));
    assert!(!events[0].result.as_ref().unwrap().ok);
    assert_eq!(events[1].event_type, EventType::ObservabilityErrorReported);
    assert_eq!(events[1].parent_event_id, Some(events[0].event_id));
    assert_eq!(events[1].causality_links, vec![events[0].event_id]);
    assert_eq!(events[1].priority, Priority::High);
    // One kernel record, two events: the same node, run, CPU and sequence, another part.
    assert_eq!(events[0].origin.part, 0);
    assert!(events.iter().all(|e| e.origin.run.node().as_str() == "node-1"));
    assert_eq!(events[1].origin.part, crate::event::COMPANION_PART);
    assert_eq!(
        (events[1].origin.cpu, events[1].origin.sequence),
        (events[0].origin.cpu, events[0].origin.sequence)
    );
    assert_ne!(events[0].origin.id(), events[1].origin.id());
}

#[test]
fn unlinkat_with_removedir_is_an_rmdir_and_renames_carry_both_paths() {
    let mut t = translator(&OpKind::ALL);
    let rmdir = record("unlinkat", [AT_FDCWD, 0, 0x200, 0, 0, 0], 0, Some(b"/w/d"), None);
    assert_eq!(run(&mut t, &rmdir)[0].event_type, EventType::FilesystemRmdir);
    let rename = record("renameat2", [AT_FDCWD, 0, AT_FDCWD, 0, 0, 0], 0, Some(b"a"), Some(b"/w/b"));
    let event = &run(&mut t, &rename)[0];
    assert_eq!(event.event_type, EventType::FilesystemRename);
    assert_eq!(path_of(event), b"/w/sub/a");
    assert_eq!(event.context.filesystem.as_ref().unwrap().target_path.as_ref().unwrap().0, b"/w/b");
}

#[test]
fn dotdot_leaving_the_watch_is_out_of_scope() {
    let mut t = translator(&OpKind::ALL);
    let counters = Counters::default();
    let mut out = Vec::new();
    let escape = record("mkdir", [0, 0o700, 0, 0, 0, 0], 0, Some(b"/w/../etc/x"), None);
    assert_eq!(t.translate(&escape, &mut out, &counters), Disposition::OutOfScope);
    assert!(out.is_empty());
}

#[test]
fn unselected_ops_update_state_but_emit_nothing() {
    let mut t = translator(&[OpKind::Write]);
    let open = record("openat", [AT_FDCWD, 0, 0, 0, 0, 0], 4, Some(b"/w/x"), None);
    assert!(run(&mut t, &open).is_empty());
    let write = record("write", [4, 0, 1, 0, 0, 0], 1, None, None);
    assert_eq!(path_of(&run(&mut t, &write)[0]), b"/w/x");
}

#[test]
fn vexfs_ioctl_becomes_a_vector_event() {
    let mut t = translator(&OpKind::ALL);
    run(&mut t, &record("openat", [AT_FDCWD, 0, 0, 0, 0, 0], 9, Some(b"/w/v"), None));
    let mut body = syscall_body([9, 0xC038_560A, 0, 0, 0, 0]);
    // SAFETY: the syscall variant of a union whose every byte is initialized.
    let arg = unsafe { &mut body.syscall.ioctl_arg };
    arg[8..12].copy_from_slice(&64u32.to_ne_bytes());
    arg[12..16].copy_from_slice(&5u32.to_ne_bytes());
    let flags = record_flags::IOCTL_ARG_VALID;
    let ioctl = record_with("ioctl", &body, flags, -i64::from(libc::ENOTTY), None, None);
    let events = run(&mut t, &ioctl);
    assert_eq!(events[0].event_type, EventType::VectorSearch);
    assert_eq!(events[0].event_subtype, "KNN_SEARCH");
    let vector = events[0].context.vector.as_ref().unwrap();
    assert_eq!((vector.dimensions, vector.k), (Some(64), Some(5)));
    assert_eq!(path_of(&events[0]), b"/w/v");
    assert_eq!(events[1].event_type, EventType::ObservabilityErrorReported);
}

#[test]
fn hostile_names_survive_translation_and_json() {
    let mut t = translator(&OpKind::ALL);
    let name: &[u8] = b"/w/bad\xff\nname\x01";
    let event = &run(&mut t, &record("mkdir", [0, 0o700, 0, 0, 0, 0], 0, Some(name), None))[0];
    assert_eq!(path_of(event), name);
    let json = serde_json::to_value(event).unwrap();
    assert!(json["context"]["filesystem"]["path"]["base64"].is_string());
    assert!(syscall_by_nr(83).is_some());
}

#[test]
fn vexfs_special_files_and_graph_derivation() {
    let mut t = translator(&OpKind::ALL);
    run(&mut t, &record("openat", [AT_FDCWD, 0, 0o1, 0, 0, 0], 11, Some(b"/w/vexfs/a.vec"), None));
    let mut write = record("write", [11, 0, 11, 0, 0, 0], 11, None, None);
    write.payload = Some(b"0.1,0.2,0.3".to_vec());
    let events = run(&mut t, &write);
    assert_eq!(events[0].event_type, EventType::VectorCreate);
    assert_eq!(events[0].context.vector.as_ref().unwrap().dimensions, Some(3));
    assert_eq!(events[1].event_type, EventType::GraphNodeUpdate);
    assert_eq!(events[1].parent_event_id, Some(events[0].event_id));
    assert_eq!(events[1].causality_links, vec![events[0].event_id]);
    let mkdir = run(&mut t, &record("mkdir", [0, 0o755, 0, 0, 0, 0], 0, Some(b"/w/vexfs/d"), None));
    let types: Vec<EventType> = mkdir.iter().map(|e| e.event_type).collect();
    assert_eq!(types, [EventType::FilesystemMkdir, EventType::GraphNodeCreate, EventType::GraphEdgeCreate]);
    let parts: Vec<u16> = mkdir.iter().map(|e| e.origin.part).collect();
    assert_eq!(
        parts,
        [0, crate::event::GRAPH_PART, crate::event::GRAPH_PART + 1],
        "each event its own origin id"
    );
    let edge = mkdir[2].context.graph.as_ref().unwrap().edge.as_ref().unwrap();
    assert_eq!(
        (edge.from.as_bytes(), edge.to.as_bytes(), edge.kind.as_str()),
        (&b"/w/vexfs"[..], &b"/w/vexfs/d"[..], "Contains")
    );
    // Outside VexFS: plain file events only.
    let plain = run(&mut t, &record("mkdir", [0, 0o755, 0, 0, 0, 0], 0, Some(b"/w/other"), None));
    assert_eq!(plain.len(), 1);
}

#[test]
fn every_event_type_translate_gives_an_operation_is_in_the_operation_table() {
    let mut translator = translator(&crate::event::USER_OPS);
    let mut checked = HashSet::new();
    for entry in vexevent_common::SYSCALLS {
        let Ok(op) = OpKind::try_from(entry.spec.op) else { continue };
        if crate::event::event_types_of(op).is_empty() {
            continue;
        }
        // Paths under the watch (relative to the cwd), success; plain, then O_CREAT, then
        // AT_REMOVEDIR, each at the argument position the syscall table gives.
        let spec = &entry.spec;
        for (open_flags, at_flags) in [(0, 0), (0o100, 0), (0, 0x200)] {
            let mut args = [0u64; 6];
            let positions = [
                (spec.dirfd1_arg, AT_FDCWD),
                (spec.dirfd2_arg, AT_FDCWD),
                (spec.open_flags_arg, open_flags),
                (spec.at_flags_arg, at_flags),
            ];
            for (position, value) in positions {
                if position != vexevent_common::NO_ARG {
                    args[usize::from(position)] = value;
                }
            }
            let path1 = (spec.path1_arg != vexevent_common::NO_ARG).then_some(&b"/w/a"[..]);
            let path2 = (spec.path2_arg != vexevent_common::NO_ARG).then_some(&b"/w/b"[..]);
            let record = record(entry.name, args, 0, path1, path2);
            for event in run(&mut translator, &record).iter().take(1) {
                assert!(
                    crate::event::event_types_of(op).contains(&event.event_type),
                    "{} ({op:?}) gave {:?}, which the operation table does not list",
                    entry.name,
                    event.event_type
                );
                checked.insert(op);
            }
        }
    }
    assert!(checked.len() >= 15, "too few operations produced an event to check: {checked:?}");
}
