//! Root tests of least privilege: once attached, every thread of a running `vexevent run` holds
//! only the capabilities it printed (read from /proc/PID/task/*/status), with an empty
//! inheritable and ambient set, the same bounding set and `no_new_privs`; capture still sees an
//! unprivileged user's files in a directory only that user can enter. The shipped systemd unit
//! passes `systemd-analyze verify` without a warning, and vexevent started with the unit's
//! bounding set and `no_new_privs` attaches, captures and narrows it further. An output file
//! given to a group is created and rotated in it after the drop (`CAP_CHOWN` kept for it).

mod support;

use std::{
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{Mount, Vexevent, exclusive_root_test, path_is};

/// The `nobody` user and group of Debian.
const NOBODY: u32 = 65534;
/// Capability numbers (linux/capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;

/// The capability lines and `NoNewPrivs` of one thread's status file.
#[derive(Debug, PartialEq, Eq)]
struct ThreadPrivileges {
    inheritable: u64,
    permitted: u64,
    effective: u64,
    bounding: u64,
    ambient: u64,
    no_new_privs: u64,
}

fn thread_privileges(status: &str) -> ThreadPrivileges {
    let field = |name: &str, radix: u32| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        u64::from_str_radix(line[name.len()..].trim(), radix).unwrap()
    };
    ThreadPrivileges {
        inheritable: field("CapInh:", 16),
        permitted: field("CapPrm:", 16),
        effective: field("CapEff:", 16),
        bounding: field("CapBnd:", 16),
        ambient: field("CapAmb:", 16),
        no_new_privs: field("NoNewPrivs:", 10),
    }
}

/// Every thread of `pid`: its name and privileges.
fn threads(pid: u32) -> Vec<(String, ThreadPrivileges)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let task = task.unwrap().path();
            let name = std::fs::read_to_string(task.join("comm")).unwrap().trim_end().to_owned();
            (name, thread_privileges(&std::fs::read_to_string(task.join("status")).unwrap()))
        })
        .collect()
}

/// A directory `nobody` can enter, inside the watched mount, and one inside it only `nobody` can.
fn private_dir_of_nobody(mount: &Mount) -> PathBuf {
    // The mount's parent is a 0700 temporary directory.
    for dir in [mount.path.parent().unwrap(), &mount.path] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let private = mount.path.join("private");
    std::fs::create_dir(&private).unwrap();
    std::os::unix::fs::chown(&private, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    private
}

/// Runs `script` with `sh -c` as `nobody` in `dir`.
fn as_nobody(dir: &Path, script: &str) -> Command {
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).current_dir(dir).uid(NOBODY).gid(NOBODY);
    command
}

#[test]
fn every_thread_keeps_only_the_printed_capabilities_and_capture_still_sees_other_users() {
    let Some(_serial) = exclusive_root_test(
        "every_thread_keeps_only_the_printed_capabilities_and_capture_still_sees_other_users",
    ) else {
        return;
    };
    let mount = Mount::tmpfs();
    let private = private_dir_of_nobody(&mount);
    // --debug-probes: the probe log thread starts before the drop and drops for itself.
    let mut vexevent = Vexevent::start(&[&mount.path], &["--debug-probes", "--stream-addr", "127.0.0.1:0"]);
    vexevent.wait_for_stderr("keeping CAP_", Duration::from_secs(5));
    let line = vexevent.stderr.iter().find(|l| l.contains("keeping CAP_")).unwrap().clone();
    assert!(
        line.contains("CAP_SYS_PTRACE (")
            && line.contains("CAP_DAC_READ_SEARCH (")
            && line.contains("no_new_privs"),
        "{line}"
    );
    let kept = (1u64 << CAP_SYS_PTRACE) | (1u64 << CAP_DAC_READ_SEARCH);
    let expected = ThreadPrivileges {
        inheritable: 0,
        permitted: kept,
        effective: kept,
        bounding: kept,
        ambient: 0,
        no_new_privs: 1,
    };
    // The drop is printed before the worker threads start: wait for them (deadline).
    let wanted = ["vexevent", "probe-log", "vexevent-pipeli", "vexevent-stream"];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let threads = loop {
        let threads = threads(vexevent.pid());
        let missing: Vec<&str> =
            wanted.into_iter().filter(|w| !threads.iter().any(|(name, _)| name == w)).collect();
        if missing.is_empty() {
            break threads;
        }
        assert!(std::time::Instant::now() < deadline, "no thread {missing:?} in {threads:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for (name, privileges) in &threads {
        if name == "probe-log" {
            // Started before the drop, it dropped everything for itself.
            let none = ThreadPrivileges { permitted: 0, effective: 0, bounding: 0, ..expected };
            assert_eq!(privileges, &none, "thread {name}");
        } else {
            assert_eq!(privileges, &expected, "thread {name}");
        }
    }

    // Capture still works, for another user, in a directory only that user can enter: the
    // inode comes from a stat through a directory that root without CAP_DAC_READ_SEARCH cannot
    // search (without it, the same run reports every event of the file with no inode).
    assert!(as_nobody(&private, "echo one > file; echo two >> file").status().unwrap().success());
    let file = private.join("file");
    let of_file = |events: &[serde_json::Value]| -> Vec<serde_json::Value> {
        events.iter().filter(|e| path_is(e, &file)).cloned().collect()
    };
    vexevent.wait_for("the create and both writes", Duration::from_secs(30), |events| {
        of_file(events).iter().filter(|e| e["event_type"] == "FilesystemWrite").count() == 2
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let events = of_file(&finished.events);
    assert_eq!(events[0]["event_type"], "FilesystemCreate", "{events:?}");
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap());
    for event in &events {
        assert_eq!(event["context"]["filesystem"]["inode_number"].as_u64(), Some(inode), "{event}");
        assert_eq!(event["process"]["uid"].as_u64(), Some(u64::from(NOBODY)), "{event}");
    }
}

/// The shipped unit's `KEY=` values (the last one of each key).
fn unit_setting(unit: &str, key: &str) -> String {
    let prefix = format!("{key}=");
    unit.lines()
        .rev()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("the unit has no {key}"))
        .to_owned()
}

#[test]
fn the_shipped_systemd_unit_verifies_and_its_bounding_set_is_enough_to_capture() {
    let Some(_serial) =
        exclusive_root_test("the_shipped_systemd_unit_verifies_and_its_bounding_set_is_enough_to_capture")
    else {
        return;
    };
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/vexevent.service"))
            .expect("dist/vexevent.service");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("UMask", "0077"),
    ] {
        assert_eq!(unit_setting(&unit, key), value, "{key}");
    }
    // `systemd-analyze verify` checks that ExecStart's program exists: the built one stands in
    // for /usr/local/bin/vexevent. It warns (exit status 0) about unknown keys and bad values.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("vexevent.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/vexevent", env!("CARGO_BIN_EXE_vexevent"))).unwrap();
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze is not installed: run scripts/setup.sh (Debian package systemd)");
    let warnings = String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success() && warnings.trim().is_empty(), "{warnings}");

    // The unit's bounding set (and no_new_privs, as NoNewPrivileges sets it) is enough.
    let bounding: Vec<String> = unit_setting(&unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("--bounding-set=-all,{}", bounding.join(","));
    let mount = Mount::tmpfs();
    let mut vexevent = Vexevent::start_under(&["setpriv", "--no-new-privs", &bounding], &[&mount.path], &[]);
    vexevent.wait_for_stderr("keeping CAP_", Duration::from_secs(5));
    let kept = (1u64 << CAP_SYS_PTRACE) | (1u64 << CAP_DAC_READ_SEARCH);
    for (name, privileges) in threads(vexevent.pid()) {
        assert_eq!((privileges.effective, privileges.bounding), (kept, kept), "thread {name}");
    }
    let file = mount.path.join("file");
    std::fs::write(&file, b"x").unwrap();
    vexevent.wait_for("the create", Duration::from_secs(30), |events| {
        events.iter().any(|e| e["event_type"] == "FilesystemCreate" && path_is(e, &file))
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
}

#[test]
fn an_output_file_given_to_a_group_is_created_and_rotated_in_it_after_the_drop() {
    let Some(_serial) =
        exclusive_root_test("an_output_file_given_to_a_group_is_created_and_rotated_in_it_after_the_drop")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("vexevent.toml");
    let output = config_dir.path().join("shared.jsonl");
    std::fs::write(
        &config,
        format!(
            "[sinks.shared]\ntype = \"file\"\npath = \"{}\"\nmode = 0o640\ngroup = \"{NOBODY}\"\nrotate_bytes = 4096\nkeep = 2\n",
            output.display()
        ),
    )
    .unwrap();
    let vexevent = Vexevent::start_with_own_sinks(&[&mount.path], &["--config", config.to_str().unwrap()]);
    let line = vexevent.stderr.iter().find(|l| l.contains("keeping CAP_")).cloned().unwrap_or_default();
    assert!(line.contains("CAP_CHOWN (sinks.shared group 65534"), "{:?}", vexevent.stderr);
    // Enough events to rotate at least once: the new file is created after the drop.
    for i in 0..200 {
        std::fs::write(mount.path.join(format!("f{i}")), b"x").unwrap();
    }
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let rotated = output.with_file_name("shared.jsonl.1");
    for file in [&output, &rotated] {
        let meta = std::fs::metadata(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!((meta.gid(), meta.mode() & 0o777), (NOBODY, 0o640), "{}", file.display());
    }
}
