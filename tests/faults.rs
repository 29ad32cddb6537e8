//! Root tests of failing parts around a running `vexevent run`, with real processes: socket
//! sinks whose peers never accept (a black-holed TCP peer, a Unix listener with a full backlog)
//! cost counted, timed-out attempts and cannot hold shutdown; a run killed (SIGKILL) while it
//! writes leaves at most one partial last line, which the next start cuts off rather than
//! extends. In each, every event not written is counted.

mod support;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Mount, Vexevent, exclusive_root_test, path_is};

/// A listener that takes no connection: backlog 0 and one connection already waiting, so the
/// kernel drops further SYNs (TCP, as a black-holing firewall would) or makes a connect wait for
/// room (Unix).
fn full_listener(domain: socket2::Domain, address: &socket2::SockAddr) -> socket2::Socket {
    let listener = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    listener.bind(address).unwrap();
    listener.listen(0).unwrap();
    listener
}

fn sink_stats<'a>(stats: &'a Value, sink: &str) -> &'a Value {
    &stats["sinks"][sink]
}

fn count(stats: &Value, sink: &str, field: &str) -> u64 {
    sink_stats(stats, sink)[field].as_u64().unwrap_or_else(|| panic!("{sink}.{field}: {stats}"))
}

#[test]
fn socket_sinks_whose_peers_never_accept_count_every_event_and_do_not_hold_shutdown() {
    const FILES: usize = 50;
    let Some(_serial) = exclusive_root_test(
        "socket_sinks_whose_peers_never_accept_count_every_event_and_do_not_hold_shutdown",
    ) else {
        return;
    };
    let mount = Mount::tmpfs();
    let dir = tempfile::tempdir().unwrap();
    let tcp_listener =
        full_listener(socket2::Domain::IPV4, &SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into());
    let tcp_addr = tcp_listener.local_addr().unwrap().as_socket().unwrap();
    let _tcp_waiting = TcpStream::connect(tcp_addr).unwrap();
    let unix_path = dir.path().join("full.sock");
    let _unix_listener = full_listener(socket2::Domain::UNIX, &socket2::SockAddr::unix(&unix_path).unwrap());
    let _unix_waiting = UnixStream::connect(&unix_path).unwrap();
    let file_path = dir.path().join("events.jsonl");
    let config = dir.path().join("vexevent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sinks.tcp]
type = "socket"
address = "tcp:{tcp_addr}"
timeout_ms = 200
[sinks.unix]
type = "socket"
address = "unix:{}"
timeout_ms = 200
[sinks.file]
type = "file"
path = "{}"
"#,
            unix_path.display(),
            file_path.display()
        ),
    )
    .unwrap();
    let vexevent = Vexevent::start_with_own_sinks(&[&mount.path], &["--config", config.to_str().unwrap()]);
    for n in 0..FILES {
        std::fs::write(mount.path.join(format!("f{n}")), b"x").unwrap();
    }
    let created = |events: &[Value]| events.iter().filter(|e| e["event_type"] == "FilesystemCreate").count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while created(&support::read_events(&file_path)) < FILES {
        assert!(Instant::now() < deadline, "the file sink never got the {FILES} creates");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both socket sinks have tried and failed (their connects timed out) by now: the stats file
    // (refreshed every second) says they are down.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats: Value = serde_json::from_slice(&std::fs::read(&vexevent.stats_file).unwrap_or_default())
            .unwrap_or_default();
        let down = |sink: &str| sink_stats(&stats, sink)["down"] == true;
        if down("tcp") && down("unix") && count(&stats, "tcp", "failed_attempts") > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the socket sinks never failed: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Shutdown: the sinks get their grace period (5 s) and one more timed-out attempt at most.
    let stopping = Instant::now();
    let finished = vexevent.stop();
    let took = stopping.elapsed();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    eprintln!("shutdown with both socket sinks down took {took:?}");
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    let stats = &finished.stats;
    let delivered_to_file = count(stats, "file", "delivered");
    let on_file = support::read_events(&file_path);
    assert_eq!(delivered_to_file, on_file.len() as u64, "{stats}");
    assert!(on_file.iter().filter(|e| path_is(e, &mount.path.join("f0"))).count() >= 1);
    for sink in ["tcp", "unix"] {
        let dropped = count(stats, sink, "dropped_shutdown") + count(stats, sink, "dropped_failed");
        assert_eq!(count(stats, sink, "delivered"), 0, "{sink}: {stats}");
        // Every sink was routed every event: delivered + dropped (with its reason) == the file's.
        assert_eq!(dropped, delivered_to_file, "{sink}: {stats}");
        assert_eq!(count(stats, sink, "queued"), 0, "{sink}: {stats}");
    }
}

/// The file's text after its last newline (a line still being written, or left by a kill),
/// looked for in its last MiB (an event is a few KiB).
fn partial_tail(path: &Path) -> Vec<u8> {
    use std::io::{Read as _, Seek as _};
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    let length = file.metadata().unwrap().len();
    file.seek(std::io::SeekFrom::Start(length.saturating_sub(1 << 20))).unwrap();
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).unwrap();
    let end = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    tail[end..].to_vec()
}

/// Every line of the file is one whole event.
fn assert_whole_lines(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "the file ends mid-line");
    for (n, line) in text.lines().enumerate() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok_and(|v| v.is_object()), "line {} is not one event: {line:.200}", n + 1);
    }
    text.lines().count()
}

#[test]
fn a_run_killed_mid_write_leaves_one_partial_line_that_the_next_start_cuts_off() {
    let Some(_serial) =
        exclusive_root_test("a_run_killed_mid_write_leaves_one_partial_line_that_the_next_start_cuts_off")
    else {
        return;
    };
    let mount = Mount::tmpfs();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("events.jsonl");
    let output_arg = ["--output", output.to_str().unwrap()];
    // Long names: big events, so that a batch takes several writes (the sink's buffer is 64 KiB)
    // and the file ends mid-line between them.
    let name = "n".repeat(200);
    let stop_workload = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workload = {
        let (root, stop) = (mount.path.clone(), std::sync::Arc::clone(&stop_workload));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = root.join(format!("{name}{}", n % 64));
                std::fs::write(&path, b"x").unwrap();
                n += 1;
            }
        })
    };
    // Frozen with SIGSTOP mid-write (a write under way still runs on), then SIGKILL, which
    // ends that write at its next page: the file ends mid-line. Unless the write finished its
    // line first; then the file ends with whole lines, and a new run is killed the same way.
    let deadline = Instant::now() + Duration::from_mins(2);
    let partial = loop {
        let vexevent = Vexevent::start_with_own_sinks(&[&mount.path], &output_arg);
        while partial_tail(&output).is_empty() {
            vexevent.signal(libc::SIGCONT);
            assert!(Instant::now() < deadline, "the file never ended mid-line while written");
            std::thread::sleep(Duration::from_millis(3));
            vexevent.signal(libc::SIGSTOP);
        }
        vexevent.signal(libc::SIGKILL);
        let killed = vexevent.stop();
        assert!(!killed.exit_ok);
        let tail = partial_tail(&output);
        if !tail.is_empty() {
            break tail;
        }
        assert!(Instant::now() < deadline, "every killed write had finished its line");
    };
    eprintln!("killed with a partial last line of {} bytes", partial.len());
    let before = std::fs::read(&output).unwrap();
    let complete = before.len() - partial.len();
    assert!(serde_json::from_slice::<Value>(&partial).is_err(), "the tail is a partial event");

    // The next start cuts the partial line off (and says so) before it appends.
    let mut again = Vexevent::start_with_own_sinks(&[&mount.path], &output_arg);
    again.wait_for_stderr("cut a partial last line", Duration::from_secs(5));
    stop_workload.store(true, std::sync::atomic::Ordering::Relaxed);
    workload.join().unwrap();
    let marker = mount.path.join("after-the-kill");
    std::fs::write(&marker, b"x").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !support::read_events(&output).iter().any(|e| path_is(e, &marker)) {
        assert!(Instant::now() < deadline, "no event after the restart");
        std::thread::sleep(Duration::from_millis(20));
    }
    let finished = again.stop();
    assert!(finished.exit_ok, "{:?}", finished.stderr);
    let after = std::fs::read(&output).unwrap();
    assert_eq!(&after[..complete], &before[..complete], "what was complete stays as it was");
    assert_whole_lines(&output);
}
