//! Shared by the root integration tests and the end-to-end benchmarks: runs the real `vexevent`
//! binary, waits for it to be ready, stops it with SIGINT and reads what it wrote; mounts real
//! file systems (tmpfs, ext4 image) for the scenarios; a webhook receiver; process usage.
#![allow(dead_code, reason = "each test or bench target uses a different part of this module")]

pub mod process;
pub mod proxy;
pub mod webhook;

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long vexevent may take to load and attach.
const READY_DEADLINE: Duration = Duration::from_mins(1);
/// How long vexevent may take to drain and exit after SIGINT.
const EXIT_DEADLINE: Duration = Duration::from_mins(1);

/// Whether we can load eBPF programs; prints why not when we cannot.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP {test}: needs root to load eBPF programs (run scripts/test.sh as root)");
    }
    root
}

/// A running `vexevent run`.
pub struct Vexevent {
    child: Child,
    pub output: PathBuf,
    pub stats_file: PathBuf,
    stderr_lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
    _dir: tempfile::TempDir,
}

/// What a finished run wrote.
pub struct Finished {
    pub events: Vec<Value>,
    pub stats: Value,
    pub stderr: Vec<String>,
    pub exit_ok: bool,
}

impl Vexevent {
    /// Starts `vexevent run --watch <watch>... <extra>` and waits until it is capturing; events
    /// go to `output`.
    pub fn start(watch: &[&Path], extra: &[&str]) -> Self {
        Self::spawn(&[], watch, extra, true)
    }

    /// Like `start`, without `--output`: the configuration given in `extra` names the sinks.
    pub fn start_with_own_sinks(watch: &[&Path], extra: &[&str]) -> Self {
        Self::spawn(&[], watch, extra, false)
    }

    /// Like `start`, run by `wrapper` (a program and its arguments, such as `setpriv ...`, that
    /// executes the command line following them).
    pub fn start_under(wrapper: &[&str], watch: &[&Path], extra: &[&str]) -> Self {
        Self::spawn(wrapper, watch, extra, true)
    }

    fn spawn(wrapper: &[&str], watch: &[&Path], extra: &[&str], with_output: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = dir.path().join("events.jsonl");
        let stats_file = dir.path().join("stats.json");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_vexevent"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_vexevent")),
        };
        command.arg("run").arg("--stats-file").arg(&stats_file);
        if with_output {
            command.arg("--output").arg(&output);
        }
        command.args(["--stats-interval", "0"]);
        for path in watch {
            command.arg("--watch").arg(path);
        }
        command.args(extra).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start vexevent");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut vexevent =
            Self { child, output, stats_file, stderr_lines: rx, stderr: Vec::new(), _dir: dir };
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match vexevent.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains("vexevent: ready");
                    vexevent.stderr.push(line);
                    if ready {
                        return vexevent;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("vexevent did not become ready: {:?}", vexevent.stderr)
                }
            }
        }
    }

    /// The token file vexevent writes beside its stats file.
    pub fn token_file(&self) -> PathBuf {
        self.stats_file.with_file_name("token")
    }

    /// The token its HTTP servers take (from its token file).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_file()).expect("the token file").trim_end().to_owned()
    }

    /// The address a server listens on, from the stderr line that names its URL
    /// (`scheme` "ws://" for the stream, "http://" for the control API).
    pub fn served_address(&self, scheme: &str) -> String {
        self.stderr
            .iter()
            .find_map(|line| line.split(scheme).nth(1)?.split('/').next().map(str::to_owned))
            .unwrap_or_else(|| panic!("no {scheme} address on stderr: {:?}", self.stderr))
    }

    /// Pid of the vexevent process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the vexevent process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(libc::pid_t::try_from(self.pid()).expect("pid"), signal) };
    }

    /// Events written so far.
    pub fn events_so_far(&self) -> Vec<Value> {
        read_events(&self.output)
    }

    /// Waits until `predicate` holds for the events written so far (deadline, no fixed sleep).
    pub fn wait_for(&self, what: &str, deadline: Duration, predicate: impl Fn(&[Value]) -> bool) {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if predicate(&self.events_so_far()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}");
    }

    /// Waits until the consumer has drained the rings: a stats file written after this call
    /// (it is refreshed every second) shows every ring empty at its last drain.
    pub fn wait_until_drained(&self, deadline: Duration) {
        let since_ms = u64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
        )
        .unwrap();
        let end = Instant::now() + deadline;
        loop {
            let stats: Value = serde_json::from_slice(&std::fs::read(&self.stats_file).unwrap_or_default())
                .unwrap_or_default();
            let drained =
                stats["rings"].as_array().is_some_and(|rings| rings.iter().all(|r| r["used_bytes"] == 0));
            if drained && stats["at_unix_ms"].as_u64().is_some_and(|at| at > since_ms) {
                return;
            }
            assert!(Instant::now() < end, "the rings were never drained: {stats}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until vexevent prints a stderr line containing `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str, deadline: Duration) {
        self.wait_for_stderr_times(needle, 1, deadline);
    }

    /// Waits until vexevent has printed `times` stderr lines containing `needle`.
    pub fn wait_for_stderr_times(&mut self, needle: &str, times: usize, deadline: Duration) {
        let end = Instant::now() + deadline;
        while self.stderr.iter().filter(|line| line.contains(needle)).count() < times {
            let left = end.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => self.stderr.push(line),
                Err(error) => panic!("vexevent never printed {needle:?} ({error}): {:?}", self.stderr),
            }
        }
    }

    /// SIGINT, wait for the orderly exit, read events and final stats.
    pub fn stop(mut self) -> Finished {
        self.signal(libc::SIGINT);
        let deadline = Instant::now() + EXIT_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "vexevent did not exit after SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(2)) {
            self.stderr.push(line);
        }
        let final_stats = std::fs::read(&self.stats_file)
            .ok()
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .unwrap_or(Value::Null);
        Finished {
            events: read_events(&self.output),
            stats: final_stats,
            stderr: std::mem::take(&mut self.stderr),
            exit_ok: status.success(),
        }
    }
}

impl Drop for Vexevent {
    /// A test that fails before `stop` must not leave the loader running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The hooks the start-up report says attached (`vexevent: attached a, b; tracing N syscalls`);
/// a `not attached: NAME (why)` line names none.
pub fn attached_hooks(stderr: &[String]) -> Vec<String> {
    stderr
        .iter()
        .find_map(|line| line.strip_prefix("vexevent: attached "))
        .and_then(|hooks| hooks.split(';').next())
        .map(|hooks| hooks.split(", ").map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Parses the complete lines of a JSON Lines file (missing file: no events). A last line still
/// being written (no newline yet) is left for the next read.
pub fn read_events(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}")))
        .collect()
}

/// A path's bytes as the event encodes them: a string, or `{base64, lossy}`.
pub fn event_path_bytes(value: &Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match value {
        Value::String(text) => Some(text.as_bytes().to_vec()),
        Value::Object(object) => {
            base64::engine::general_purpose::STANDARD.decode(object.get("base64")?.as_str()?).ok()
        }
        _ => None,
    }
}

/// Whether an event's file-system path is `path`.
pub fn path_is(event: &Value, path: &Path) -> bool {
    has_path_bytes(event, &bytes(path))
}

/// Whether an event's file-system path is these bytes.
pub fn has_path_bytes(event: &Value, path: &[u8]) -> bool {
    event_path_bytes(&event["context"]["filesystem"]["path"]).as_deref() == Some(path)
}

/// The first event of this type for this path.
pub fn find_event<'a, E: std::borrow::Borrow<Value>>(
    events: &'a [E],
    event_type: &str,
    path: &Path,
) -> &'a Value {
    events
        .iter()
        .map(std::borrow::Borrow::borrow)
        .find(|e| e["event_type"] == event_type && path_is(e, path))
        .unwrap_or_else(|| panic!("no {event_type} event for {}", path.display()))
}

/// The suite's serial lock: tests that chdir, mount or watch the same places run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the serial lock for a root test; `None` (with the reason printed) when not root.
pub fn exclusive_root_test(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    root_or_skip(test).then(|| SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// A mounted file system that is unmounted (and cleaned up) on drop.
pub struct Mount {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    image: Option<PathBuf>,
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

impl Mount {
    /// A fresh tmpfs.
    pub fn tmpfs() -> Self {
        Self::tmpfs_of_size("64m")
    }

    /// A fresh tmpfs of `size` (as `mount -o size=` takes it), to fill up.
    pub fn tmpfs_of_size(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tmpfs");
        std::fs::create_dir(&path).expect("mount point");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "vexevent-test"])
            .arg(&path));
        Self { path, _dir: dir, image: None }
    }

    /// A fresh ext4 file system in a loop-mounted image file.
    pub fn ext4() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("ext4.img");
        let path = dir.path().join("ext4");
        std::fs::create_dir(&path).expect("mount point");
        std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).expect("image");
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
        run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&path));
        Self { path, _dir: dir, image: Some(image) }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

/// bindfs in the foreground (so its pid is the daemon's), unmounted on drop.
pub struct Bindfs {
    pub child: Child,
    pub mount_point: PathBuf,
    _dirs: tempfile::TempDir,
}

impl Bindfs {
    /// Mounts a fresh directory at `<watched>/fuse` with Debian's bindfs (which
    /// `scripts/setup.sh` installs: a missing bindfs fails the test, it does not skip it).
    pub fn mount(watched: &Path) -> Self {
        let dirs = tempfile::tempdir().expect("temp dir");
        let source = dirs.path().join("source");
        std::fs::create_dir(&source).expect("bindfs source directory");
        let mount_point = watched.join("fuse");
        std::fs::create_dir(&mount_point).expect("bindfs mount point");
        let child = Command::new("bindfs")
            .arg("-f")
            .arg(&source)
            .arg(&mount_point)
            .spawn()
            .expect("bindfs is not installed: run scripts/setup.sh");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mount_point(&mount_point) {
            assert!(Instant::now() < deadline, "bindfs did not mount {}", mount_point.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, mount_point, _dirs: dirs }
    }
}

fn is_mount_point(path: &Path) -> bool {
    let wanted = bytes(path);
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|line| line.split(' ').nth(4).is_some_and(|mp| mp.as_bytes() == wanted.as_slice()))
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path as a C string.
pub fn c_path(path: &[u8]) -> CString {
    CString::new(path).expect("no NUL in path")
}

/// A `Path` as bytes.
pub fn bytes(path: &Path) -> Vec<u8> {
    path.as_os_str().as_bytes().to_vec()
}
