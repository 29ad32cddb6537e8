//! Root integration tests of kernel capture: the real `vexevent` binary loads the real probes,
//! this test performs a scripted sequence of real operations (every traced syscall family,
//! relative and dirfd-relative paths, hostile and 4 KiB names, failures, a `VexFS` ioctl, a mount)
//! on a real tmpfs and a real ext4 image, and asserts the exact events, zero loss, and that
//! operations outside the watched directory produced nothing.

mod support;

use std::{io::Write as _, path::Path, time::Duration};

use serde_json::Value;
use support::{
    Mount, Vexevent, bytes, c_path, event_path_bytes, exclusive_root_test, has_path_bytes, root_or_skip,
};

/// One expected event: type, absolute path, second path, errno name.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Expected {
    event_type: &'static str,
    path: Vec<u8>,
    target: Option<Vec<u8>>,
    error: Option<&'static str>,
}

struct Script {
    root: Vec<u8>,
    expected: Vec<Expected>,
}

/// `KNN_SEARCH` from `VexFS`'s ioctl table.
const VEXFS_KNN_SEARCH: libc::c_ulong = 0xC038_560A;

/// Asserts a libc call succeeded; returns its result (an fd, a count, 0).
fn check<T: Copy + TryInto<i32> + PartialOrd + Default>(ret: T, what: &str) -> i32 {
    assert!(ret >= T::default(), "{what} failed: {}", std::io::Error::last_os_error());
    ret.try_into().unwrap_or(i32::MAX)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl Script {
    fn path(&self, relative: &[u8]) -> Vec<u8> {
        let mut path = self.root.clone();
        if !relative.is_empty() {
            path.push(b'/');
            path.extend_from_slice(relative);
        }
        path
    }

    fn expect(&mut self, event_type: &'static str, relative: &[u8]) {
        let path = self.path(relative);
        self.expected.push(Expected { event_type, path, target: None, error: None });
    }

    fn expect_target(&mut self, event_type: &'static str, relative: &[u8], target: Vec<u8>) {
        let path = self.path(relative);
        self.expected.push(Expected { event_type, path, target: Some(target), error: None });
    }

    fn expect_failure(&mut self, event_type: &'static str, path: &[u8], error: &'static str) {
        for event_type in [event_type, "ObservabilityErrorReported"] {
            self.expected.push(Expected {
                event_type,
                path: path.to_vec(),
                target: None,
                error: Some(error),
            });
        }
    }
}

/// Performs every operation in `root` (a fresh mount) and returns what vexevent must report for
/// this thread, in order.
#[expect(clippy::too_many_lines, reason = "one linear script reads best")]
fn run_script(root: &Path) -> Script {
    let mut s = Script { root: bytes(root), expected: Vec::new() };
    let c = |p: &[u8]| c_path(p);
    // SAFETY (whole script): plain libc calls with valid NUL-terminated paths and buffers.
    unsafe {
        check(libc::chdir(c(&s.root).as_ptr()), "chdir");

        // Relative open with creation, then fd-based operations on it.
        let fd = check(libc::open(c(b"rel.txt").as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644), "open");
        s.expect("FilesystemCreate", b"rel.txt");
        check(libc::write(fd, b"hello".as_ptr().cast(), 5), "write");
        s.expect("FilesystemWrite", b"rel.txt");
        check(libc::pwrite(fd, b"xy".as_ptr().cast(), 2, 10), "pwrite");
        s.expect("FilesystemWrite", b"rel.txt");
        check(libc::fsync(fd), "fsync");
        s.expect("SystemSync", b"rel.txt");
        check(libc::ftruncate(fd, 3), "ftruncate");
        s.expect("FilesystemTruncate", b"rel.txt");
        check(libc::fchmod(fd, 0o600), "fchmod");
        s.expect("FilesystemChmod", b"rel.txt");
        check(libc::fchown(fd, 1000, 1000), "fchown");
        s.expect("FilesystemChown", b"rel.txt");
        check(libc::fsetxattr(fd, c(b"user.test").as_ptr(), b"v".as_ptr().cast(), 1, 0), "fsetxattr");
        s.expect("FilesystemWrite", b"rel.txt");
        check(libc::close(fd), "close");
        s.expect("FilesystemRead", b"rel.txt");

        // Reads through an absolute path.
        let fd = check(libc::open(c(&s.path(b"rel.txt")).as_ptr(), libc::O_RDONLY), "open");
        s.expect("FilesystemRead", b"rel.txt");
        let mut buf = [0u8; 16];
        check(libc::read(fd, buf.as_mut_ptr().cast(), 16), "read");
        s.expect("FilesystemRead", b"rel.txt");
        check(libc::pread(fd, buf.as_mut_ptr().cast(), 2, 1), "pread");
        s.expect("FilesystemRead", b"rel.txt");
        let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 4 };
        check(libc::preadv(fd, &raw const iov, 1, 0), "preadv");
        s.expect("FilesystemRead", b"rel.txt");
        // A VexFS vector ioctl: not served by this file system (ENOTTY), decoded all the same.
        let mut knn = [0u32; 16];
        knn[2] = 128; // dimensions @8
        knn[3] = 10; // k @12
        knn[4] = 1; // metric @16
        assert_eq!(libc::ioctl(fd, VEXFS_KNN_SEARCH, knn.as_mut_ptr()), -1);
        assert_eq!(errno(), libc::ENOTTY);
        s.expect_failure("VectorSearch", &s.path(b"rel.txt"), "ENOTTY");
        check(libc::close(fd), "close");
        s.expect("FilesystemRead", b"rel.txt");

        // Directories and dirfd-relative operations.
        check(libc::mkdir(c(b"sub").as_ptr(), 0o755), "mkdir");
        s.expect("FilesystemMkdir", b"sub");
        assert_eq!(libc::mkdir(c(b"sub").as_ptr(), 0o755), -1);
        s.expect_failure("FilesystemMkdir", &s.path(b"sub"), "EEXIST");
        let dirfd = check(libc::open(c(b"sub").as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY), "open dir");
        s.expect("FilesystemRead", b"sub");
        let fd = check(
            libc::openat(dirfd, c(b"in.txt").as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600),
            "openat",
        );
        s.expect("FilesystemCreate", b"sub/in.txt");
        check(libc::close(fd), "close");
        s.expect("FilesystemRead", b"sub/in.txt");
        // openat2 reads its flags from a struct: O_CREAT there creates (and again, finds the file).
        for expected in ["FilesystemCreate", "FilesystemRead"] {
            // struct open_how { flags, mode, resolve }
            let how: [u64; 3] = [(libc::O_CREAT | libc::O_WRONLY).cast_unsigned().into(), 0o640, 0];
            let fd = check(
                libc::syscall(
                    libc::SYS_openat2,
                    dirfd,
                    c(b"how.txt").as_ptr(),
                    how.as_ptr(),
                    size_of_val(&how),
                ),
                "openat2",
            );
            s.expect(expected, b"sub/how.txt");
            check(libc::close(fd), "close");
            s.expect("FilesystemRead", b"sub/how.txt");
        }
        check(
            libc::renameat(dirfd, c(b"in.txt").as_ptr(), libc::AT_FDCWD, c(b"moved.txt").as_ptr()),
            "renameat",
        );
        s.expect_target("FilesystemRename", b"sub/in.txt", s.path(b"moved.txt"));
        check(
            libc::linkat(libc::AT_FDCWD, c(b"moved.txt").as_ptr(), dirfd, c(b"hard").as_ptr(), 0),
            "linkat",
        );
        s.expect_target("FilesystemHardlink", b"sub/hard", s.path(b"moved.txt"));
        check(libc::symlink(c(b"moved.txt").as_ptr(), c(b"sym").as_ptr()), "symlink");
        s.expect_target("FilesystemSymlink", b"sym", b"moved.txt".to_vec());
        check(libc::chmod(c(b"moved.txt").as_ptr(), 0o640), "chmod");
        s.expect("FilesystemChmod", b"moved.txt");
        check(libc::chown(c(b"moved.txt").as_ptr(), 1000, 1000), "chown");
        s.expect("FilesystemChown", b"moved.txt");
        check(libc::truncate(c(b"moved.txt").as_ptr(), 1), "truncate");
        s.expect("FilesystemTruncate", b"moved.txt");
        let graph = c(b"user.vexfs.graph.color");
        check(
            libc::setxattr(c(b"moved.txt").as_ptr(), graph.as_ptr(), b"red".as_ptr().cast(), 3, 0),
            "setxattr",
        );
        s.expect("GraphPropertySet", b"moved.txt");
        check(libc::removexattr(c(b"moved.txt").as_ptr(), graph.as_ptr()), "removexattr");
        s.expect("GraphPropertyDelete", b"moved.txt");

        // dup2 keeps the path: a write through the duplicate names the file.
        let fd = check(
            libc::open(c(b"dup.txt").as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644),
            "open",
        );
        s.expect("FilesystemCreate", b"dup.txt");
        check(libc::dup2(fd, 100), "dup2");
        check(libc::close(fd), "close");
        s.expect("FilesystemRead", b"dup.txt");
        check(libc::write(100, b"d".as_ptr().cast(), 1), "write dup");
        s.expect("FilesystemWrite", b"dup.txt");
        check(libc::close(100), "close dup");
        s.expect("FilesystemRead", b"dup.txt");

        // Hostile names: invalid UTF-8, newline, control character.
        let hostile: &[u8] = b"bad\xff\nname\x01";
        let fd = check(
            libc::open(c(hostile).as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644),
            "hostile",
        );
        s.expect("FilesystemCreate", hostile);
        check(libc::close(fd), "close");
        s.expect("FilesystemRead", hostile);
        check(libc::unlink(c(hostile).as_ptr()), "unlink hostile");
        s.expect("FilesystemDelete", hostile);

        // A path close to PATH_MAX, built from 200-byte components.
        let mut long = Vec::new();
        while s.root.len() + long.len() + 202 < 3900 {
            if !long.is_empty() {
                long.push(b'/');
            }
            long.extend(std::iter::repeat_n(b'd', 200));
            check(libc::mkdir(c(&s.path(&long)).as_ptr(), 0o755), "mkdir long");
            s.expect("FilesystemMkdir", &long.clone());
        }
        let mut long_file = long.clone();
        long_file.extend_from_slice(b"/file");
        let fd = check(
            libc::open(c(&s.path(&long_file)).as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o644),
            "open long",
        );
        assert!(s.path(&long_file).len() > 3800);
        s.expect("FilesystemCreate", &long_file);
        check(libc::close(fd), "close");
        s.expect("FilesystemRead", &long_file);
        // Longer than PATH_MAX: the kernel refuses it; the event says the path was cut.
        let too_long: Vec<u8> = s.path(&vec![b'x'; 5000]);
        assert_eq!(libc::open(c(&too_long).as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644), -1);
        assert_eq!(errno(), libc::ENAMETOOLONG);
        s.expect_failure("FilesystemCreate", &too_long[..4095], "ENAMETOOLONG");

        // Failures.
        assert_eq!(libc::unlink(c(b"missing").as_ptr()), -1);
        s.expect_failure("FilesystemDelete", &s.path(b"missing"), "ENOENT");

        // Removal, including unlinkat with AT_REMOVEDIR.
        check(libc::unlink(c(b"sym").as_ptr()), "unlink sym");
        s.expect("FilesystemDelete", b"sym");
        check(libc::unlinkat(dirfd, c(b"hard").as_ptr(), 0), "unlinkat");
        s.expect("FilesystemDelete", b"sub/hard");
        check(libc::unlinkat(dirfd, c(b"how.txt").as_ptr(), 0), "unlinkat");
        s.expect("FilesystemDelete", b"sub/how.txt");
        check(libc::close(dirfd), "close dirfd");
        s.expect("FilesystemRead", b"sub");
        check(libc::unlinkat(libc::AT_FDCWD, c(b"sub").as_ptr(), libc::AT_REMOVEDIR), "unlinkat dir");
        s.expect("FilesystemRmdir", b"sub");

        // Mount and unmount inside the watched tree.
        check(libc::mkdir(c(b"mnt").as_ptr(), 0o755), "mkdir mnt");
        s.expect("FilesystemMkdir", b"mnt");
        let mount_point = c(&s.path(b"mnt"));
        check(
            libc::mount(
                c(b"vexevent-inner").as_ptr(),
                mount_point.as_ptr(),
                c(b"tmpfs").as_ptr(),
                0,
                std::ptr::null(),
            ),
            "mount",
        );
        s.expect_target("SystemMount", b"mnt", b"vexevent-inner".to_vec());
        check(libc::umount2(mount_point.as_ptr(), 0), "umount");
        s.expect("SystemUnmount", b"mnt");
        check(libc::rmdir(c(b"mnt").as_ptr()), "rmdir");
        s.expect("FilesystemRmdir", b"mnt");

        check(libc::chdir(c(b"/").as_ptr()), "chdir /");
    }
    s
}

/// Operations outside the watched directory: must produce nothing.
fn run_outside(dir: &Path) {
    let file = dir.join("outside.txt");
    std::fs::write(&file, b"nope").unwrap();
    let _ = std::fs::read(&file).unwrap();
    std::fs::rename(&file, dir.join("outside2.txt")).unwrap();
    std::fs::remove_file(dir.join("outside2.txt")).unwrap();
}

fn summarize(event: &Value) -> Expected {
    let fs = &event["context"]["filesystem"];
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    Expected {
        event_type: leak(event["event_type"].as_str().unwrap()),
        path: event_path_bytes(&fs["path"]).unwrap_or_default(),
        target: event_path_bytes(&fs["target_path"]),
        error: event["result"]["error"].as_str().map(leak),
    }
}

fn gettid() -> u64 {
    // SAFETY: no preconditions.
    u64::try_from(unsafe { libc::gettid() }).unwrap()
}

/// The operation-specific fields of the scripted events.
fn assert_fields(ours: &[&Value]) {
    let find = |event_type: &str, subtype: &str| -> &Value {
        ours.iter()
            .find(|e| e["event_type"] == event_type && e["event_subtype"] == subtype)
            .unwrap_or_else(|| panic!("no {event_type}/{subtype} event"))
    };
    let pid = u64::from(std::process::id());
    for event in ours {
        assert_eq!(event["process"]["pid"].as_u64(), Some(pid));
        assert!(event["timestamp"]["wall_ns"].as_u64().unwrap() > 1_600_000_000_000_000_000);
        assert!(event["event_type_code"].as_u64().unwrap() >> 8 > 0);
    }
    assert_eq!(find("FilesystemCreate", "openat")["event_type_code"], 0x0101);
    assert_eq!(find("FilesystemWrite", "write")["context"]["filesystem"]["bytes"], 5);
    assert_eq!(find("FilesystemWrite", "pwrite64")["context"]["filesystem"]["offset"], 10);
    assert_eq!(find("FilesystemTruncate", "ftruncate")["context"]["filesystem"]["size"], 3);
    assert_eq!(find("FilesystemChmod", "fchmod")["context"]["filesystem"]["mode"], "600");
    assert_eq!(find("FilesystemChown", "chown")["context"]["filesystem"]["uid"], 1000);
    assert_eq!(find("FilesystemMkdir", "mkdir")["context"]["filesystem"]["mode"], "755");
    assert_eq!(find("FilesystemCreate", "openat2")["context"]["filesystem"]["mode"], "640");
    assert_eq!(find("FilesystemWrite", "fsetxattr")["context"]["filesystem"]["xattr_name"], "user.test");
    assert_eq!(find("FilesystemRmdir", "unlinkat")["event_type_code"], 0x010A);
    let vector = find("VectorSearch", "KNN_SEARCH");
    assert_eq!(vector["event_type_code"], 0x0304);
    assert_eq!(vector["context"]["vector"]["dimensions"], 128);
    assert_eq!(vector["context"]["vector"]["k"], 10);
    assert_eq!(vector["context"]["vector"]["metric"], 1);
    // Every failed operation has exactly one error event, linked by its id, and every error
    // event names a failed operation.
    let errors: Vec<&&Value> =
        ours.iter().filter(|e| e["event_type"] == "ObservabilityErrorReported").collect();
    let failed: Vec<&&Value> = ours
        .iter()
        .filter(|e| e["result"]["ok"] == false && e["event_type"] != "ObservabilityErrorReported")
        .collect();
    assert!(!failed.is_empty());
    for operation in &failed {
        let companions = errors.iter().filter(|e| e["parent_event_id"] == operation["event_id"]).count();
        assert_eq!(companions, 1, "{operation}");
    }
    for error in &errors {
        assert_eq!(error["event_type_code"], 0x0808);
        assert!(failed.iter().any(|f| f["event_id"] == error["parent_event_id"]), "{error}");
    }
    let created = find("FilesystemCreate", "openat");
    assert!(created["context"]["filesystem"]["inode_number"].as_u64().unwrap() > 0);
    assert_eq!(created["context"]["filesystem"]["file_type"], "regular");
    assert!(created["duration_ns"].as_u64().unwrap() > 0);
    let hostile = ours.iter().find(|e| e["context"]["filesystem"]["path"].is_object()).unwrap();
    assert!(
        hostile["context"]["filesystem"]["path"]["lossy"]
            .as_str()
            .unwrap()
            .ends_with("bad\u{fffd}\nname\u{1}")
    );
    let cut = ours.iter().find(|e| e["result"]["error"] == "ENAMETOOLONG").unwrap();
    assert_eq!(cut["context"]["filesystem"]["path_truncated"], true);
}

fn capture_scenario(mount: &Mount, extra: &[&str]) {
    let outside = tempfile::tempdir().unwrap();
    let vexevent = Vexevent::start(&[&mount.path], extra);
    let script = run_script(&mount.path);
    run_outside(outside.path());
    // A child process with its cwd inside the watch: fork inherits the scope, the shell's relative
    // redirect resolves against the inherited cwd.
    let child = std::process::Command::new("sh")
        .args(["-c", "echo child > child.txt"])
        .current_dir(&mount.path)
        .status()
        .unwrap();
    assert!(child.success());
    let child_path = bytes(&mount.path.join("child.txt"));
    vexevent.wait_for("the child's write", Duration::from_secs(30), |events| {
        events.iter().any(|e| e["event_type"] == "FilesystemWrite" && has_path_bytes(e, &child_path))
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "vexevent exit status: {:?}", finished.stderr);

    // Exactly the scripted events, in order, for this thread.
    let tid = gettid();
    let ours: Vec<&Value> =
        finished.events.iter().filter(|e| e["process"]["tid"].as_u64() == Some(tid)).collect();
    let actual: Vec<Expected> = ours.iter().map(|e| summarize(e)).collect();
    for (i, (a, e)) in actual.iter().zip(&script.expected).enumerate() {
        assert_eq!(a, e, "event {i} differs: {}", ours[i]);
    }
    assert_eq!(
        actual.len(),
        script.expected.len(),
        "event count; extra: {:?}",
        actual.get(script.expected.len()..)
    );

    assert_fields(&ours);

    // The child: its relative redirect resolved against the cwd it was started in.
    let child_events: Vec<&Value> =
        finished.events.iter().filter(|e| has_path_bytes(e, &child_path)).collect();
    assert!(
        child_events.iter().any(|e| e["event_type"] == "FilesystemCreate" && e["process"]["comm"] == "sh")
    );
    let pid = u64::from(std::process::id());
    assert!(child_events.iter().all(|e| e["process"]["pid"].as_u64() != Some(pid)));

    // Nothing from outside the watch reached userspace.
    let outside_bytes = bytes(outside.path());
    for event in &finished.events {
        let path = event_path_bytes(&event["context"]["filesystem"]["path"]).unwrap_or_default();
        assert!(!path.starts_with(&outside_bytes), "event outside the watch: {event}");
        assert!(path.starts_with(&bytes(&mount.path)), "event outside the watch: {event}");
    }

    // Every event delivered, nothing lost, the output stream contiguous.
    let stats = &finished.stats;
    assert_eq!(stats["final_snapshot"], true, "{stats}");
    for field in ["unaccounted", "lost_reported"] {
        assert_eq!(stats["loss"][field], 0, "{field}: {stats}");
    }
    // The identity itself (`unaccounted` is a saturating difference that a surplus would hide).
    let loss = |field: &str| stats["loss"][field].as_u64().unwrap();
    assert_eq!(loss("records_sequenced"), loss("records_received") + loss("lost_reported"), "{stats}");
    assert_eq!(stats["userspace"]["records_missing"], 0, "{stats}");
    assert!(stats["latency"]["events"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["loss"]["decode_errors"], 0, "{stats}");
    assert_eq!(stats["userspace"]["events_delivered"].as_u64(), Some(finished.events.len() as u64));
    assert!(stats["kernel"]["filtered_scope"].as_u64().unwrap() > 0, "kernel scope filter counted: {stats}");
    // Every ring's fill is gauged from its real positions: its size, and records seen waiting.
    let rings = stats["rings"].as_array().unwrap();
    assert!(!rings.is_empty(), "{stats}");
    assert!(rings.iter().all(|r| r["size_bytes"] == 16 << 20), "the default ring size: {stats}");
    assert!(rings.iter().any(|r| r["peak_bytes"].as_u64().unwrap() > 0), "records waited in a ring: {stats}");
    assert!(rings.iter().all(|r| r["used_bytes"].as_u64() <= r["peak_bytes"].as_u64()), "{stats}");
    for (i, event) in finished.events.iter().enumerate() {
        assert_eq!(event["global_sequence"].as_u64(), Some(i as u64));
    }
    assert!(finished.stderr.iter().any(|l| l.contains("final stats")), "{:?}", finished.stderr);
    let attached = if extra.contains(&"tracepoint") { "raw_syscalls/sys_enter" } else { "tp_btf/sys_enter" };
    assert!(support::attached_hooks(&finished.stderr).iter().any(|h| h == attached), "{:?}", finished.stderr);
    // The exit hook frees the tables' slots; fds are followed by their open file; no watched
    // file or cwd was refused by a full table.
    for hook in ["sched/sched_process_exit", "fd scope by open file"] {
        let line = finished.stderr.iter().find(|l| l.contains(hook));
        assert!(line.is_some_and(|l| !l.contains("not ")), "{hook}: {:?}", finished.stderr);
    }
    assert_eq!(stats["kernel"]["scope_full"], 0, "{stats}");
}

#[test]
fn captures_every_operation_on_tmpfs() {
    let Some(_serial) = exclusive_root_test("captures_every_operation_on_tmpfs") else { return };
    capture_scenario(&Mount::tmpfs(), &[]);
}

#[test]
fn captures_every_operation_on_ext4() {
    let Some(_serial) = exclusive_root_test("captures_every_operation_on_ext4") else { return };
    capture_scenario(&Mount::ext4(), &[]);
}

#[test]
fn captures_every_operation_through_the_tracepoint_fallback() {
    let Some(_serial) = exclusive_root_test("captures_every_operation_through_the_tracepoint_fallback")
    else {
        return;
    };
    capture_scenario(&Mount::tmpfs(), &["--syscall-hooks", "tracepoint"]);
}

#[test]
fn kernel_filters_by_comm_and_operation_type() {
    let Some(_serial) = exclusive_root_test("kernel_filters_by_comm_and_operation_type") else { return };
    let mount = Mount::tmpfs();
    let vexevent = Vexevent::start(&[&mount.path], &["--ops", "mkdir", "--comm", "mkdir"]);
    let made = mount.path.join("by-mkdir");
    assert!(std::process::Command::new("mkdir").arg(&made).status().unwrap().success());
    // Same operation from another comm, and another operation type from the right comm.
    std::fs::create_dir(mount.path.join("by-test")).unwrap();
    std::fs::write(mount.path.join("file"), b"x").unwrap();
    let made_bytes = bytes(&made);
    vexevent.wait_for("the mkdir event", Duration::from_secs(30), |events| {
        events.iter().any(|e| has_path_bytes(e, &made_bytes))
    });
    let finished = vexevent.stop();
    assert_eq!(finished.events.len(), 1, "{:?}", finished.events);
    assert_eq!(finished.events[0]["event_type"], "FilesystemMkdir");
    assert_eq!(finished.events[0]["process"]["comm"], "mkdir");
    assert!(finished.stats["kernel"]["filtered_comm"].as_u64().unwrap() > 0);
    assert!(finished.stats["kernel"]["filtered_op"].as_u64().unwrap() > 0, "the op filter ran in the kernel");
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    let exe = env!("CARGO_BIN_EXE_vexevent");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(exe).args(args).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (ok, err) = run(&["run", "--watch", "/no/such/dir"]);
    assert!(!ok);
    assert!(err.contains("watch path /no/such/dir does not exist"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[capture]\nwatch = [\"/tmp\"]\nbogus = 1\n").unwrap();
    let (ok, err) = run(&["run", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("unknown field `bogus`") && err.contains("line 3"), "{err}");
    let (ok, err) = run(&["run", "--ops", "open,frobnicate"]);
    assert!(!ok);
    assert!(err.contains("unknown operation type \"frobnicate\""), "{err}");
    let (ok, err) = run(&["check-config", "../vexevent.example.toml"]);
    assert!(ok, "{err}");
    // ... and prints the stage graph the configuration gives.
    let checked =
        std::process::Command::new(exe).args(["check-config", "../vexevent.example.toml"]).output().unwrap();
    let graph = String::from_utf8_lossy(&checked.stdout);
    assert!(graph.contains("stages: kernel -> correlate -> filter -> sequence -> route"), "{graph}");
    // check-config lists every problem, each with where it is.
    let several = dir.path().join("several.toml");
    std::fs::write(
        &several,
        "[capture]\nwatch = [\"/no/such/dir\"]\nops = [\"opne\"]\nring_bytes = 5000\n[filter]\nexpressions = [\"pid ==\"]\n",
    )
    .unwrap();
    let output =
        std::process::Command::new(exe).args(["check-config", several.to_str().unwrap()]).output().unwrap();
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(
        listed.contains("/no/such/dir") && listed.contains("\"opne\"") && listed.contains("5000"),
        "{listed}"
    );
    assert!(listed.contains("filter.expressions[0]") && listed.contains("line 1, column 7"), "{listed}");
    let (ok, help) = {
        let output = std::process::Command::new(exe).args(["run", "--help"]).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    };
    assert!(ok && help.contains("--watch") && help.contains("Examples:"), "{help}");
}

#[test]
fn stats_are_available_while_running_and_on_sigusr1() {
    let Some(_serial) = exclusive_root_test("stats_are_available_while_running_and_on_sigusr1") else {
        return;
    };
    let mount = Mount::tmpfs();
    let mut vexevent = Vexevent::start(&[&mount.path], &[]);
    std::fs::write(mount.path.join("f"), b"x").unwrap();
    vexevent.wait_for("the write", Duration::from_secs(30), |events| {
        events.iter().any(|e| e["event_type"] == "FilesystemWrite")
    });
    // The stats file is refreshed every second: wait until it shows the delivered events.
    let exe = env!("CARGO_BIN_EXE_vexevent");
    let stats_file = vexevent.stats_file.to_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let summary = loop {
        let json = std::process::Command::new(exe)
            .args(["stats", "--json", "--stats-file", &stats_file])
            .output()
            .unwrap();
        let delivered = serde_json::from_slice::<Value>(&json.stdout)
            .ok()
            .and_then(|s| s["userspace"]["events_delivered"].as_u64())
            .unwrap_or(0);
        let output =
            std::process::Command::new(exe).args(["stats", "--stats-file", &stats_file]).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && delivered > 0 {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "stats never showed the events: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(summary.contains("kernel:") && summary.contains("filtered"), "{summary}");
    let json = std::process::Command::new(exe)
        .args(["stats", "--json", "--stats-file", &stats_file])
        .output()
        .unwrap();
    let snapshot: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(snapshot["pid"].as_u64(), Some(u64::from(vexevent.pid())));
    assert!(snapshot["kernel"]["emitted"].as_u64().unwrap() > 0);
    vexevent.signal(libc::SIGUSR1);
    vexevent.wait_for_stderr("vexevent stats (pid", Duration::from_secs(30));
    let finished = vexevent.stop();
    let reports = finished.stderr.iter().filter(|l| l.starts_with("vexevent stats")).count();
    assert_eq!(reports, 1, "SIGUSR1 prints one report: {:?}", finished.stderr);
}

#[test]
fn missing_privileges_and_tracefs_are_clear_errors() {
    if !root_or_skip("missing_privileges_and_tracefs_are_clear_errors") {
        return;
    }
    let exe = env!("CARGO_BIN_EXE_vexevent");
    let as_nobody = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", exe, "run", "--watch", "/tmp"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&as_nobody.stderr);
    assert!(!as_nobody.status.success());
    assert!(err.contains("needs root") && err.contains("run vexevent as root"), "{err}");
    // In a private mount namespace without tracefs.
    let without_tracefs = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("umount -l /sys/kernel/tracing; umount -l /sys/kernel/debug 2>/dev/null; exec {exe} run --watch /tmp"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&without_tracefs.stderr);
    assert!(!without_tracefs.status.success());
    assert!(err.contains("tracefs is not mounted") && err.contains("mount -t tracefs"), "{err}");
}

#[test]
fn filter_expressions_run_in_userspace_and_push_down_to_the_kernel() {
    let Some(_serial) =
        exclusive_root_test("filter_expressions_run_in_userspace_and_push_down_to_the_kernel")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let glob = format!("path glob {:?}", format!("{}/keep-*", mount.path.display()));
    let vexevent = Vexevent::start(
        &[&mount.path],
        &["--filter", r#"comm == "mkdir" and type == FilesystemMkdir"#, "--filter", &glob],
    );
    let kept = mount.path.join("keep-1");
    for dir in [&kept, &mount.path.join("other")] {
        assert!(std::process::Command::new("mkdir").arg(dir).status().unwrap().success());
    }
    std::fs::create_dir(mount.path.join("keep-2")).unwrap(); // not by `mkdir`
    std::fs::write(mount.path.join("keep-3"), b"x").unwrap(); // not a mkdir
    let kept_bytes = bytes(&kept);
    vexevent.wait_for("the kept mkdir", Duration::from_secs(30), |events| {
        events.iter().any(|e| has_path_bytes(e, &kept_bytes))
    });
    let finished = vexevent.stop();
    assert_eq!(finished.events.len(), 1, "{:#?}", finished.events);
    assert_eq!(finished.events[0]["event_type"], "FilesystemMkdir");
    let stats = &finished.stats;
    // Pushed down: the comm and the operation type are checked in the kernel...
    assert!(stats["kernel"]["filtered_comm"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["kernel"]["filtered_op"].as_u64().unwrap() > 0, "{stats}");
    // ...the path glob in userspace (it dropped the mkdir of `other`).
    assert!(stats["userspace"]["filtered_expression"].as_u64().unwrap() >= 1, "{stats}");
}

#[test]
fn files_opened_before_the_run_keep_their_paths_after_the_process_exits() {
    let Some(_serial) =
        exclusive_root_test("files_opened_before_the_run_keep_their_paths_after_the_process_exits")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let file = mount.path.join("opened-early.txt");
    // The shell opens the file before vexevent starts, writes once told to, and exits at once:
    // by the time its write is translated, /proc no longer shows the fd.
    let mut shell = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3>>'{}'; read go; echo hi >&3", file.display()))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let fd3 = format!("/proc/{}/fd/3", shell.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&fd3).is_err() {
        assert!(std::time::Instant::now() < deadline, "the shell never opened the file");
        std::thread::sleep(Duration::from_millis(10));
    }
    let vexevent = Vexevent::start(&[&mount.path], &[]);
    // vexevent is stopped while the shell writes and exits: the write waits in the ring and is
    // translated only once /proc no longer has the shell, so only the start-up scan knows the fd.
    vexevent.signal(libc::SIGSTOP);
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let exited = shell.wait().unwrap().success();
    vexevent.signal(libc::SIGCONT);
    assert!(exited);
    let pid = u64::from(shell.id());
    let is_the_write =
        |e: &Value| e["event_type"] == "FilesystemWrite" && e["process"]["pid"].as_u64() == Some(pid);
    vexevent.wait_for("the shell's write", Duration::from_secs(30), |events| events.iter().any(is_the_write));
    let finished = vexevent.stop();
    let write = finished.events.iter().find(|e| is_the_write(e)).unwrap();
    assert_eq!(event_path_bytes(&write["context"]["filesystem"]["path"]), Some(bytes(&file)), "{write}");
    assert!(write["context"]["filesystem"]["inode_number"].as_u64().is_some(), "{write}");
}

#[test]
fn signals_right_after_ready_are_handled_not_fatal() {
    let Some(_serial) = exclusive_root_test("signals_right_after_ready_are_handled_not_fatal") else {
        return;
    };
    let mount = Mount::tmpfs();
    for _ in 0..3 {
        // SIGHUP at once: a reload (of the defaults here), not the default action that ends the
        // process.
        let mut vexevent = Vexevent::start(&[&mount.path], &[]);
        vexevent.signal(libc::SIGHUP);
        vexevent.wait_for_stderr("vexevent: reloaded", Duration::from_secs(30));
        let finished = vexevent.stop();
        assert!(finished.exit_ok, "{:?}", finished.stderr);
        // SIGINT at once: an orderly stop with final stats.
        let finished = Vexevent::start(&[&mount.path], &[]).stop();
        assert!(finished.exit_ok, "{:?}", finished.stderr);
        assert!(finished.stderr.iter().any(|l| l.contains("final stats")), "{:?}", finished.stderr);
    }
}

/// Opens a path at a bad user address: the probe's path read faults (EFAULT for the caller).
fn open_bad_pointer() {
    // SAFETY: the kernel rejects the address with EFAULT; nothing is dereferenced here.
    let fd = unsafe { libc::open(std::ptr::dangling::<libc::c_char>(), libc::O_RDONLY) };
    assert_eq!((fd, errno()), (-1, libc::EFAULT));
}

#[test]
fn probe_diagnostics_are_off_by_default_and_printed_with_debug_probes() {
    let Some(_serial) =
        exclusive_root_test("probe_diagnostics_are_off_by_default_and_printed_with_debug_probes")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let ours = format!("of pid {}", std::process::id());
    // Off by default: the same fault prints nothing.
    let quiet = Vexevent::start(&[&mount.path], &[]);
    open_bad_pointer();
    let finished = quiet.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    assert!(!finished.stderr.iter().any(|l| l.contains("vexevent::probes")), "{:?}", finished.stderr);
    // With --debug-probes the probe says which syscall of which process it could not read.
    let mut debugging = Vexevent::start(&[&mount.path], &["--debug-probes"]);
    open_bad_pointer();
    let needle = format!("{ours} (record flags");
    debugging.wait_for_stderr(&needle, Duration::from_secs(30));
    let line = debugging.stderr.iter().find(|l| l.contains(&needle)).cloned().unwrap_or_default();
    let finished = debugging.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    assert!(line.contains("vexevent::probes") && line.contains("path read fault"), "{line}");
}

/// Whether `pid` catches SIGINT (`SigCgt` in /proc/PID/status).
fn catches_sigint(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| u64::from_str_radix(line.strip_prefix("SigCgt:")?.trim(), 16).ok())
        .is_some_and(|caught| caught & (1 << (libc::SIGINT - 1)) != 0)
}

#[test]
fn a_sigint_sent_while_the_probes_load_is_answered_with_an_orderly_stop() {
    let Some(_serial) =
        exclusive_root_test("a_sigint_sent_while_the_probes_load_is_answered_with_an_orderly_stop")
    else {
        return;
    };
    let watched = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Started with SIGINT ignored, as a shell starts its background jobs: the handler vexevent
    // installs first thing must take over, and a SIGINT during start-up must not be lost.
    let mut child = {
        use std::os::unix::process::CommandExt as _;
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vexevent"));
        command
            .args(["run", "--stats-interval", "0", "--output", "/dev/null", "--watch"])
            .arg(watched.path())
            .arg("--stats-file")
            .arg(dir.path().join("stats.json"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // SAFETY: signal() is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                Ok(())
            });
        }
        command.spawn().unwrap()
    };
    let pid = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !catches_sigint(pid) {
        assert!(std::time::Instant::now() < deadline, "vexevent never installed its SIGINT handler");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: `pid` is our child, not yet reaped.
    unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGINT) };
    let output = {
        let deadline = std::time::Instant::now() + Duration::from_mins(1);
        loop {
            if child.try_wait().unwrap().is_some() {
                break child.wait_with_output().unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "vexevent did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("vexevent final stats"), "an orderly stop prints the final stats: {stderr}");
}

/// Writes through every way an fd comes to share an open file: the fd `open` returned, Python's
/// `os.dup` (`fcntl(F_DUPFD_CLOEXEC)`), `fcntl(F_DUPFD)`, and the fd a forked child inherited
/// (written once the parent has closed all of its own). Prints the child's pid.
const SHARED_FD_WRITER: &str = r"
import fcntl, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, b'original\n')
dup = os.dup(fd)
os.write(dup, b'os.dup\n')
dupfd = fcntl.fcntl(fd, fcntl.F_DUPFD, 50)
os.write(dupfd, b'F_DUPFD\n')
go_read, go_write = os.pipe()
child = os.fork()
if child == 0:
    os.read(go_read, 1)
    os.write(fd, b'child\n')
    os._exit(0)
for shared in (fd, dup, dupfd):
    os.close(shared)
os.write(go_write, b'x')
os.waitpid(child, 0)
print(child, flush=True)
";

#[test]
fn writes_through_dup_fdupfd_and_forked_children_are_reported_on_their_path() {
    let Some(_serial) =
        exclusive_root_test("writes_through_dup_fdupfd_and_forked_children_are_reported_on_their_path")
    else {
        return;
    };
    if std::process::Command::new("python3").arg("-c").arg("pass").status().is_err() {
        eprintln!(
            "SKIP writes_through_dup_fdupfd_and_forked_children_are_reported_on_their_path: no python3"
        );
        return;
    }
    let mount = Mount::tmpfs();
    let file = mount.path.join("shared.log");
    let vexevent = Vexevent::start(&[&mount.path], &[]);
    let output =
        std::process::Command::new("python3").arg("-c").arg(SHARED_FD_WRITER).arg(&file).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let child: u64 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "original\nos.dup\nF_DUPFD\nchild\n");
    let file_bytes = bytes(&file);
    let writes = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["event_type"] == "FilesystemWrite" && has_path_bytes(e, &file_bytes))
            .cloned()
            .collect()
    };
    vexevent.wait_for("the child's write", Duration::from_secs(30), |events| {
        writes(events).iter().any(|e| e["process"]["pid"].as_u64() == Some(child))
    });
    let finished = vexevent.stop();
    let writes = writes(&finished.events);
    let by = |pid: u64| writes.iter().filter(|e| e["process"]["pid"].as_u64() == Some(pid)).count();
    assert_eq!(writes.len(), 4, "every write, on its path: {writes:?}");
    assert_eq!(by(child), 1, "the child's write through the inherited fd: {writes:?}");
    let parent = writes[0]["process"]["pid"].as_u64().unwrap();
    assert_eq!(by(parent), 3, "the parent's writes through open, os.dup and F_DUPFD: {writes:?}");
    let fds: Vec<u64> = writes.iter().map(|e| e["context"]["filesystem"]["fd"].as_u64().unwrap()).collect();
    assert_eq!(fds[2], 50, "the F_DUPFD write names its own fd: {writes:?}");
    assert_ne!(fds[0], fds[1], "the os.dup write names its own fd: {writes:?}");
    for write in &writes {
        assert!(write["context"]["filesystem"]["inode_number"].as_u64().is_some(), "{write}");
    }
    assert_eq!(finished.stats["loss"]["unaccounted"], 0, "{}", finished.stats);
}
