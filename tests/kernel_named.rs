//! Root tests of tracepoints and kernel functions attached by name: a tracepoint's events after
//! a real write on ext4 (fields from its format file, the implied event type, the rate cap
//! counted), and the start-up report for kernel functions (what did not attach and why; capture
//! goes on: why fentry did not attach and what was used instead). Where the kernel has fentry
//! or kprobes the functions attach and their events are checked.

mod support;

use std::{path::Path, time::Duration};

use serde_json::Value;
use support::{Mount, Vexevent, exclusive_root_test, root_or_skip};

/// Writes a configuration file next to `dir` and returns its path.
fn config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("vexevent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn kernel_events<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["context"]["kernel"]["name"] == name).collect()
}

#[test]
fn tracepoints_attach_by_name_and_carry_their_fields() {
    let Some(_guard) = exclusive_root_test("tracepoints_attach_by_name_and_carry_their_fields") else {
        return;
    };
    if !root_or_skip("tracepoints_attach_by_name_and_carry_their_fields") {
        return;
    }
    let mount = Mount::ext4();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        r#"
[capture]
comm = "dd"

[[tracepoints]]
name = "writeback:writeback_dirty_inode"
rate_per_sec = 0

[[tracepoints]]
name = "filemap:mm_filemap_add_to_page_cache"
fields = ["i_ino", "s_dev", "index"]
rate_per_sec = 2

[[tracepoints]]
name = "nosuch:tracepoint"
"#,
    );
    let vexevent = Vexevent::start(&[&mount.path], &["--config", config.to_str().unwrap()]);
    let report = vexevent.stderr.join("\n");
    assert!(
        report.contains("not attached: nosuch:tracepoint (no tracepoint nosuch:tracepoint in this kernel"),
        "{report}"
    );
    assert!(report.contains("writeback/writeback_dirty_inode"), "{report}");
    let file = mount.path.join("data.bin");
    let written = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4096", "count=64", "conv=fsync", "status=none"])
        .arg(format!("of={}", file.display()))
        .status()
        .unwrap();
    assert!(written.success());
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap());
    vexevent.wait_for("the writeback tracepoint event of the file", Duration::from_secs(30), |events| {
        kernel_events(events, "writeback:writeback_dirty_inode")
            .iter()
            .any(|e| e["context"]["kernel"]["fields"]["ino"] == ino)
    });
    let finished = vexevent.stop();
    let writeback = kernel_events(&finished.events, "writeback:writeback_dirty_inode");
    let event = writeback.iter().find(|e| e["context"]["kernel"]["fields"]["ino"] == ino).unwrap();
    assert_eq!(event["event_type"], "SystemSync", "writeback implies SystemSync: {event}");
    assert_eq!(event["event_subtype"], "writeback:writeback_dirty_inode");
    assert_eq!(event["context"]["kernel"]["hook"], "tracepoint");
    assert_eq!(event["process"]["comm"], "dd", "the comm filter applies: {event}");
    let bdi = event["context"]["kernel"]["fields"]["name"].as_str().unwrap();
    assert!(!bdi.is_empty(), "the char[32] field is read: {event}");
    assert!(event["context"]["kernel"]["fields"]["state"].is_u64(), "{event}");
    assert!(event.get("result").is_none(), "a tracepoint has no return value: {event}");
    // 64 pages went into the page cache; at most two per CPU per second got through the cap.
    let filemap = kernel_events(&finished.events, "filemap:mm_filemap_add_to_page_cache");
    assert!(!filemap.is_empty(), "no page cache events");
    assert!(
        filemap.iter().all(|e| e["event_type"] == "ObservabilityAuditEvent"),
        "generic type: {filemap:?}"
    );
    let fields = &filemap[0]["context"]["kernel"]["fields"];
    assert!(fields["i_ino"].is_u64() && fields["s_dev"].is_u64() && fields["index"].is_u64(), "{fields}");
    assert!(fields.get("pfn").is_none(), "only the configured fields: {fields}");
    let stats = &finished.stats;
    let limited = stats["kernel"]["filtered_kernel_rate"].as_u64().unwrap();
    assert!(limited > 0, "the rate cap is counted: {stats}");
    assert!(filemap.len() as u64 + limited >= 64, "capped and delivered cover the 64 pages: {stats}");
    assert_eq!(stats["loss"]["unaccounted"], 0, "{stats}");
    assert!(finished.exit_ok);
}

#[test]
fn kernel_functions_report_what_did_not_attach_and_capture_continues() {
    let test = "kernel_functions_report_what_did_not_attach_and_capture_continues";
    let Some(_guard) = exclusive_root_test(test) else { return };
    if !root_or_skip(test) {
        return;
    }
    let mount = Mount::tmpfs();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        r#"
[[kernel_functions]]
name = "vfs_mkdir"

[[kernel_functions]]
name = "vexevent_no_such_function"

[[kernel_functions]]
name = "vfs_unlink"
args = ["no_such_argument"]
"#,
    );
    let vexevent = Vexevent::start(&[&mount.path], &["--config", config.to_str().unwrap()]);
    let report = vexevent.stderr.join("\n");
    assert!(
        report.contains("not attached: vexevent_no_such_function (not in /proc/kallsyms"),
        "a missing function is reported: {report}"
    );
    assert!(report.contains("not attached: vfs_unlink (has no argument no_such_argument"), "{report}");
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    // fentry first; where it did not attach, the report says why and which fallback is taken.
    let fentry = report.lines().any(|l| l.contains("vexevent: attached") && l.contains("fentry/vfs_mkdir"));
    if !fentry {
        let fallback = if kprobes { "; using a kprobe)" } else { "; no kprobe either)" };
        assert!(
            report.lines().any(|l| l.contains("not attached: fentry/vfs_mkdir (") && l.ends_with(fallback)),
            "the start-up report says why fentry did not attach: {report}"
        );
        if kprobes {
            assert!(report.contains("kprobe/vfs_mkdir"), "{report}");
        } else {
            assert!(
                report.contains("not attached: vfs_mkdir (this kernel has no kprobes"),
                "the start-up report says why vfs_mkdir did not attach: {report}"
            );
        }
    }
    // Capture goes on: the syscall probes see the mkdir.
    let made = mount.path.join("made");
    std::fs::create_dir(&made).unwrap();
    let path = made.to_str().unwrap().to_owned();
    vexevent.wait_for("the mkdir event", Duration::from_secs(30), |events| {
        events
            .iter()
            .any(|e| e["event_type"] == "FilesystemMkdir" && e["context"]["filesystem"]["path"] == path)
    });
    let finished = vexevent.stop();
    let by_function = kernel_events(&finished.events, "vfs_mkdir");
    if fentry || kprobes {
        let event = by_function
            .iter()
            .find(|e| e["context"]["filesystem"]["path"] == path)
            .unwrap_or_else(|| panic!("no vfs_mkdir event for {path}: {by_function:?}"));
        assert_eq!(event["event_type"], "FilesystemMkdir");
        assert_eq!(event["result"]["ret"], 0, "{event}");
        let syscall = event["context"]["kernel"]["syscall"].as_str().unwrap_or_default();
        assert!(syscall.starts_with("mkdir"), "joined to its syscall: {event}");
    } else {
        assert!(by_function.is_empty());
    }
    assert_eq!(finished.stats["loss"]["unaccounted"], 0);
    assert!(finished.exit_ok);
}
