//! Root tests of FUSE capture on a real FUSE file system (Debian's bindfs, not ours): every file
//! operation on the mount is one event that carries the FUSE requests it caused (opcode,
//! connection, requester, daemon, error) and a timeline whose parts sum to the whole; requests no
//! syscall claims (asynchronous releases) are events of their own; daemon error replies and
//! kernel permission failures are reported as failures; nothing is lost. A daemon killed while a
//! request waits for it fails that operation visibly (its request aborted), and capture goes on.

mod support;

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use support::{Bindfs, Vexevent, bytes, event_path_bytes, exclusive_root_test, find_event, has_path_bytes};

/// The first FUSE request with this opcode among the events.
fn find_request<'a>(events: &[&'a Value], opcode: &str) -> &'a Value {
    events
        .iter()
        .flat_map(|e| e["context"]["fuse"].as_array().into_iter().flatten())
        .find(|r| r["opcode_name"] == opcode)
        .unwrap_or_else(|| panic!("no {opcode} request"))
}

fn opcodes(event: &Value) -> Vec<String> {
    event["context"]["fuse"]
        .as_array()
        .map(|requests| requests.iter().map(|r| r["opcode_name"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default()
}

/// Each operation is one event that carries the FUSE request that served it, with a timeline.
fn assert_joined_operations(ours: &[&Value], root: &Path, pid: u64, daemon_pid: u64) {
    let find = |event_type: &str, name: &str| find_event(ours, event_type, &root.join(name));
    for (event_type, name, opcode) in [
        ("FilesystemCreate", "file.txt", "CREATE"),
        ("FilesystemWrite", "file.txt", "WRITE"),
        ("FilesystemMkdir", "dir", "MKDIR"),
        ("FilesystemRename", "file.txt", "RENAME"),
        ("FilesystemDelete", "moved.txt", "UNLINK"),
        ("FilesystemRmdir", "dir", "RMDIR"),
    ] {
        let event = find(event_type, name);
        assert!(opcodes(event).iter().any(|o| o == opcode), "{event_type} {name}: {event}");
        for request in event["context"]["fuse"].as_array().unwrap() {
            assert_eq!(request["requester_pid"].as_u64(), Some(pid), "{request}");
            assert_eq!(request["daemon_pid"].as_u64(), Some(daemon_pid), "{request}");
            assert!(request["connection"].as_u64().unwrap() > 0);
        }
        let t = &event["timeline"];
        let at = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k} in {event}"));
        assert!(at("syscall_enter_ns") <= at("request_queued_ns"), "{t}");
        assert!(at("request_queued_ns") <= at("request_ended_ns"), "{t}");
        assert!(at("request_ended_ns") <= at("syscall_exit_ns"), "{t}");
        assert_eq!(
            at("before_fuse_ns") + at("fuse_ns") + at("after_fuse_ns"),
            event["duration_ns"].as_u64().unwrap(),
            "{t}"
        );
    }
}

/// What the daemon side adds: paths of requests no syscall claimed (from node ids), names, the
/// daemon's own boundaries in order, and where the FUSE time went.
fn assert_daemon_side(events: &[Value], ours: &[&Value], file: &Path) {
    // Requests nobody was waiting for (the release after a close) are events of their own, with
    // the path of their node, learned from the daemon's replies (CREATE named it; RENAME moved it).
    let released: Vec<Vec<u8>> = events
        .iter()
        .filter(|e| e["event_subtype"] == "FUSE_RELEASE")
        .filter_map(|e| event_path_bytes(&e["context"]["filesystem"]["path"]))
        .collect();
    assert!(released.contains(&bytes(file)), "RELEASE of file.txt by node id: {released:?}");
    // The daemon side of each request: read by the daemon, then replied, in order, and the
    // names the requests carried.
    let create = find_request(ours, "CREATE");
    assert_eq!(create["name"], "file.txt");
    assert!(create["entry_nodeid"].as_u64().unwrap() > 1, "{create}");
    for request in ours.iter().flat_map(|e| e["context"]["fuse"].as_array().into_iter().flatten()) {
        let (Some(received), Some(replied)) =
            (request["daemon_received_ns"].as_u64(), request["daemon_replied_ns"].as_u64())
        else {
            continue;
        };
        let queued = request["queued_ns"].as_u64().unwrap();
        let ended = request["ended_ns"].as_u64().unwrap();
        assert!(queued <= received && received <= replied && replied <= ended, "{request}");
    }
    // Where the FUSE time went: kernel queue + daemon + reply is all of it for one request and
    // part of it for several (the kernel works between them).
    let mut single = 0;
    for event in ours.iter().filter(|e| e["timeline"]["daemon_ns"].is_u64()) {
        let t = &event["timeline"];
        let parts: u64 =
            ["kernel_queue_ns", "daemon_ns", "reply_ns"].iter().map(|k| t[k].as_u64().unwrap()).sum();
        let fuse = t["fuse_ns"].as_u64().unwrap();
        if opcodes(event).len() == 1 {
            assert_eq!(parts, fuse, "{event}");
            single += 1;
        } else {
            assert!(parts <= fuse, "{event}");
        }
    }
    assert!(single > 0, "some operations were served by one request with the daemon side seen");
}

#[test]
fn fuse_operations_are_joined_to_their_syscalls_with_a_timeline() {
    let Some(_serial) = exclusive_root_test("fuse_operations_are_joined_to_their_syscalls_with_a_timeline")
    else {
        return;
    };
    let watched = tempfile::tempdir().unwrap();
    let bindfs = Bindfs::mount(watched.path());
    let daemon_pid = u64::from(bindfs.child.id());
    let vexevent = Vexevent::start(&[watched.path()], &[]);
    let root = bindfs.mount_point.clone();
    let file = root.join("file.txt");

    std::fs::write(&file, b"hello").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"hello");
    std::fs::create_dir(root.join("dir")).unwrap();
    std::fs::rename(&file, root.join("moved.txt")).unwrap();
    assert_eq!(std::fs::remove_file(root.join("missing")).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    std::fs::remove_file(root.join("moved.txt")).unwrap();
    std::fs::remove_dir(root.join("dir")).unwrap();
    // A file only its owner may read, read by another user: the kernel refuses (EACCES) after
    // asking the daemon for its attributes.
    let secret = root.join("secret");
    std::fs::write(&secret, b"s").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let denied = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(!denied.status.success());

    let last = bytes(&root.join("dir"));
    vexevent.wait_for("the rmdir", Duration::from_secs(30), |events| {
        events.iter().any(|e| e["event_type"] == "FilesystemRmdir" && has_path_bytes(e, &last))
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    assert!(
        support::attached_hooks(&finished.stderr).iter().any(|h| h == "fuse/fuse_request_send"),
        "{:?}",
        finished.stderr
    );

    let pid = u64::from(std::process::id());
    let ours: Vec<&Value> =
        finished.events.iter().filter(|e| e["process"]["pid"].as_u64() == Some(pid)).collect();
    let find = |event_type: &str, name: &str| find_event(&ours, event_type, &root.join(name));
    assert_joined_operations(&ours, &root, pid, daemon_pid);
    let read = ours
        .iter()
        .find(|e| e["event_subtype"] == "read" && opcodes(e).iter().any(|o| o == "READ"))
        .expect("a read served by a FUSE READ");
    assert_eq!(read["context"]["filesystem"]["bytes"], 5);
    // The daemon's error reply: the unlink of a missing file fails on the LOOKUP.
    let missing = find("FilesystemDelete", "missing");
    assert_eq!(missing["result"]["error"], "ENOENT");
    assert!(
        missing["context"]["fuse"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["opcode_name"] == "LOOKUP" && r["error"] == -2),
        "{missing}"
    );
    // The kernel's permission failure, after asking the daemon.
    let denied = finished
        .events
        .iter()
        .find(|e| e["result"]["error"] == "EACCES" && e["process"]["comm"] == "cat")
        .expect("the denied open");
    assert!(denied["context"]["fuse"].as_array().is_some_and(|requests| !requests.is_empty()), "{denied}");
    assert_daemon_side(&finished.events, &ours, &file);
    // A joined request is not reported twice.
    let standalone_creates = finished.events.iter().filter(|e| e["event_subtype"] == "FUSE_CREATE").count();
    assert_eq!(standalone_creates, 0);

    let stats = &finished.stats;
    assert_eq!(stats["loss"]["unaccounted"], 0, "{stats}");
    assert_eq!(stats["loss"]["lost_reported"], 0, "{stats}");
    assert!(stats["userspace"]["fuse_joined"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["kernel"]["fuse_requests"].as_u64().unwrap() > 0, "{stats}");
}

#[test]
fn a_fuse_daemon_killed_mid_request_fails_that_operation_visibly_and_capture_goes_on() {
    let Some(_serial) = exclusive_root_test(
        "a_fuse_daemon_killed_mid_request_fails_that_operation_visibly_and_capture_goes_on",
    ) else {
        return;
    };
    let watched = tempfile::tempdir().unwrap();
    let mut bindfs = Bindfs::mount(watched.path());
    let daemon = libc::pid_t::try_from(bindfs.child.id()).unwrap();
    let vexevent = Vexevent::start(&[watched.path()], &[]);
    let root = bindfs.mount_point.clone();
    std::fs::write(root.join("before"), b"x").unwrap();
    // The daemon stops; a create on the mount then waits for its answer in the kernel...
    // SAFETY: signalling the bindfs child this test started.
    unsafe { libc::kill(daemon, libc::SIGSTOP) };
    let stuck = root.join("stuck");
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg(format!("echo x > '{}'", stuck.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wchan = format!("/proc/{}/wchan", writer.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&wchan).unwrap_or_default() != "request_wait_answer" {
        assert!(std::time::Instant::now() < deadline, "the create never waited for the daemon");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...when the daemon dies: the kernel aborts the connection and the create fails.
    // SAFETY: as above.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    bindfs.child.wait().unwrap();
    assert!(!writer.wait().unwrap().success());
    // Capture goes on outside the dead mount.
    let after = watched.path().join("after");
    std::fs::write(&after, b"x").unwrap();
    vexevent.wait_for("the create after the kill", Duration::from_secs(30), |events| {
        events.iter().any(|e| e["event_type"] == "FilesystemCreate" && has_path_bytes(e, &bytes(&after)))
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);

    // The interrupted create is reported as failed, with its aborted FUSE request, and an error
    // event linked to it.
    let failed = finished
        .events
        .iter()
        .find(|e| has_path_bytes(e, &bytes(&stuck)) && e["result"]["ok"] == false)
        .unwrap_or_else(|| panic!("no failed operation on {}", stuck.display()));
    // (named `E103`: the errno table of translate has no name for ECONNABORTED yet)
    let aborted = -libc::ECONNABORTED;
    assert_eq!(failed["result"]["ret"], aborted, "{failed}");
    assert!(
        failed["context"]["fuse"]
            .as_array()
            .is_some_and(|requests| requests.iter().any(|r| r["error"] == aborted)),
        "{failed}"
    );
    assert!(
        finished
            .events
            .iter()
            .any(|e| e["event_type"] == "ObservabilityErrorReported"
                && e["parent_event_id"] == failed["event_id"]),
        "no error event for {failed}"
    );
    let stats = &finished.stats;
    assert_eq!(stats["loss"]["unaccounted"], 0, "{stats}");
    assert_eq!(stats["loss"]["lost_reported"], 0, "{stats}");
    assert_eq!(stats["userspace"]["records_missing"], 0, "{stats}");
}
