//! Root test of `VexFS` semantics on a FUSE daemon of ours that follows `VexFS`'s FUSE conventions
//! (`tests/vexfs_fs.rs`, in memory, mounted as `fuse.vexfs`): vector stores and searches through
//! special files, control and stats files, Graph events derived from file operations with causal
//! links, the daemon's search function timed by a uprobe inside the request it served, and zero
//! loss.

mod support;
#[path = "vexfs_fs.rs"]
mod vexfs_fs;

use std::time::Duration;

use serde_json::Value;
use support::{Vexevent, bytes, event_path_bytes, find_event, path_is, root_or_skip};

/// The events derived from `parent`, by type.
fn derived<'a>(events: &'a [Value], parent: &Value) -> Vec<&'a Value> {
    events.iter().filter(|e| e["parent_event_id"] == parent["event_id"]).collect()
}

/// The types of the events derived from `parent`.
fn derived_types<'a>(events: &'a [Value], parent: &Value) -> Vec<&'a Value> {
    derived(events, parent).into_iter().map(|e| &e["event_type"]).collect()
}

#[test]
fn vexfs_special_files_graph_events_and_daemon_functions() {
    if !root_or_skip("vexfs_special_files_graph_events_and_daemon_functions") {
        return;
    }
    let watched = tempfile::tempdir().unwrap();
    let root = watched.path().join("vexfs");
    std::fs::create_dir(&root).unwrap();
    let mount = vexfs_fs::VexfsMount::mount(&root).expect("mount the VexFS test daemon");
    let entry = vexfs_fs::mountinfo_entry(mount.path()).expect("mounted");
    assert!(entry.contains(" - fuse.vexfs vexfs"), "{entry}");
    let exe = std::env::current_exe().unwrap();
    let vexevent = Vexevent::start(
        &[watched.path()],
        &["--fuse-daemon-binary", exe.to_str().unwrap(), "--fuse-daemon-function", "vexfs_search_vectors"],
    );
    assert!(vexevent.stderr.iter().any(|l| l.contains("fuse.vexfs")), "{:?}", vexevent.stderr);

    let docs = root.join("docs");
    std::fs::create_dir(&docs).unwrap();
    let vector = docs.join("a.vec");
    std::fs::write(&vector, b"0.1,0.2,0.3,0.4").unwrap();
    let query = root.join("q.search");
    std::fs::write(&query, b"vector: 0.1,0.2,0.3,0.4\nk: 3\n").unwrap();
    let control_search = root.join("_vexfs/search");
    std::fs::write(&control_search, b"vector: 1,2,3,4\n").unwrap();
    let control = root.join("_vexfs/control");
    std::fs::write(&control, b"ef_search=64\n").unwrap();
    let stats = root.join("_vexfs/stats");
    assert!(!std::fs::read(&stats).unwrap().is_empty());
    // The daemon refuses writes to the stats file: an EACCES error reply.
    let mut stats_file = std::fs::OpenOptions::new().write(true).open(&stats).unwrap();
    let refused = std::io::Write::write(&mut stats_file, b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EACCES));
    drop(stats_file);
    let moved = docs.join("b.vec");
    std::fs::rename(&vector, &moved).unwrap();
    std::fs::remove_file(&moved).unwrap();
    std::fs::remove_dir(&docs).unwrap();
    assert_eq!(std::fs::remove_file(root.join("missing")).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    assert!(vexfs_fs::searches() >= 2, "the daemon served the searches");

    vexevent.wait_for("the rmdir", Duration::from_secs(30), |events| {
        events.iter().any(|e| e["event_type"] == "FilesystemRmdir" && path_is(e, &docs))
    });
    let finished = vexevent.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let events = &finished.events;
    let find = |event_type: &str, path: &std::path::Path| find_event(events, event_type, path);

    // Vector store: a write to *.vec, one event, dimensions from the data, joined to its FUSE
    // WRITE, and the node update it derives.
    let store = find("VectorCreate", &vector);
    assert_eq!(store["event_type_code"], 0x0301);
    assert_eq!(store["context"]["vector"]["dimensions"], 4);
    assert!(
        store["context"]["fuse"].as_array().unwrap().iter().any(|r| r["opcode_name"] == "WRITE"),
        "{store}"
    );
    let updates = derived(events, store);
    assert!(updates.iter().any(|e| e["event_type"] == "GraphNodeUpdate"), "{updates:?}");
    assert!(updates.iter().all(|e| e["causality_links"][0] == store["event_id"]));

    // Searches: k parsed, or VexFS's defaults; the daemon's search function timed inside the
    // request that served it.
    let search = find("VectorSearch", &query);
    assert_eq!(
        (search["context"]["vector"]["k"].as_u64(), search["context"]["vector"]["dimensions"].as_u64()),
        (Some(3), Some(4))
    );
    let write =
        search["context"]["fuse"].as_array().unwrap().iter().find(|r| r["opcode_name"] == "WRITE").unwrap();
    assert!(write["daemon_function_calls"].as_u64().unwrap() >= 1, "{write}");
    let in_function = write["daemon_functions_ns"].as_u64().unwrap();
    let daemon = write["daemon_replied_ns"].as_u64().unwrap() - write["daemon_received_ns"].as_u64().unwrap();
    assert!(in_function > 0 && in_function <= daemon, "{write}");
    assert!(search["timeline"]["daemon_functions_ns"].as_u64().unwrap() > 0, "{search}");
    assert_eq!(find("VectorSearch", &control_search)["context"]["vector"]["k"], 10);

    // Control and stats files.
    assert_eq!(find("SystemOptimization", &control)["context"]["parameters"]["ef_search"], "64");
    assert_eq!(find("ObservabilityMetricCollected", &stats)["event_type_code"], 0x0801);

    // Graph events from file operations, each naming its cause.
    let mkdir = find("FilesystemMkdir", &docs);
    let graph: Vec<&str> = derived(events, mkdir).iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(graph, ["GraphNodeCreate", "GraphEdgeCreate"]);
    let edge = &derived(events, mkdir)[1]["context"]["graph"]["edge"];
    assert_eq!(event_path_bytes(&edge["from"]), Some(bytes(&root)));
    assert_eq!(edge["kind"], "Contains");
    let rename = find("FilesystemRename", &vector);
    let graph: Vec<&str> =
        derived(events, rename).iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(graph, ["GraphEdgeDelete", "GraphEdgeCreate"]);
    assert_eq!(derived(events, find("FilesystemDelete", &moved))[0]["event_type"], "GraphNodeDelete");
    assert_eq!(derived(events, find("FilesystemRmdir", &docs))[0]["event_type"], "GraphNodeDelete");
    let refused = events
        .iter()
        .find(|e| e["event_subtype"] == "write" && path_is(e, &stats))
        .expect("the refused write");
    assert_eq!(refused["result"]["error"], "EACCES");
    assert!(
        refused["context"]["fuse"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["opcode_name"] == "WRITE" && r["error"] == -13),
        "{refused}"
    );
    let missing = find("FilesystemDelete", &root.join("missing"));
    assert_eq!(missing["result"]["error"], "ENOENT");
    assert_eq!(derived_types(events, missing), ["ObservabilityErrorReported"]);

    let stats = &finished.stats;
    assert_eq!(stats["loss"]["unaccounted"], 0, "{stats}");
    assert_eq!(stats["loss"]["lost_reported"], 0, "{stats}");
}
