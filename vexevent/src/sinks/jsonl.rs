//! JSON Lines sink: one event per line, appended to a file or written to stdout, flushed after
//! every batch so readers see events within one drain interval. A file can rotate by size or age
//! (`file.jsonl` -> `file.jsonl.1` -> ... -> `file.jsonl.<keep>`), always between batches, so no
//! line is ever split: a batch that fails (disk full) is cut off the file again, so its retry
//! writes it once, whole; a partial last line left by a run that was killed mid-write is cut off
//! when the file is opened again. Files are private to root unless configured otherwise (mode
//! 0600), and a symbolic link where a file is expected is refused rather than followed (another
//! user could plant one to make root write or truncate elsewhere).

use std::{
    fs::{File, OpenOptions, Permissions},
    io::{self, BufWriter, Write},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{DeliveryError, SinkError, queue::Queued, worker::Deliver};

/// When a file output starts a new file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file holds this many bytes.
    pub max_bytes: Option<u64>,
    /// Rotate once the file is this old.
    pub max_age: Option<Duration>,
    /// Rotated files kept (`.1` newest); older ones are deleted.
    pub keep: usize,
}

/// A file being written, and when it rotates.
struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    /// Permission bits of the file.
    access: FileAccess,
    /// The file, when it is a regular one: a failed batch is cut back off it.
    regular: Option<File>,
    written: u64,
    opened: Instant,
}

/// Who may read an output file: its permission bits and, when set, its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAccess {
    pub mode: u32,
    pub group: Option<u32>,
}

/// Opens `path` to append, creating it with `access`; never through a symbolic link. A regular
/// file that already exists gets `access` too (whatever created it, its events are as private).
fn open_append(path: &Path, access: FileAccess) -> Result<File, SinkError> {
    let open_error = |source: io::Error| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            SinkError::Symlink { path: path.to_owned() }
        } else {
            SinkError::Open { path: path.to_owned(), source }
        }
    };
    // Read too: a partial last line is looked for before appending.
    let file = OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(access.mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(open_error)?;
    // Not a device or a FIFO the user pointed the output at (`/dev/null`'s mode is not ours).
    if file.metadata().map_err(open_error)?.is_file() {
        if let Some(gid) = access.group {
            std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(open_error)?;
        }
        file.set_permissions(Permissions::from_mode(access.mode)).map_err(open_error)?;
    }
    Ok(file)
}

/// Longest tail of a file searched for its last complete line (an event is a few KiB at most).
const PARTIAL_LINE_SEARCH: u64 = 1 << 20;

/// Cuts a partial last line (a run killed mid-write) off a regular file, so that the next line
/// does not extend it; returns the file's length after.
fn cut_partial_line(file: &File, path: &Path) -> io::Result<u64> {
    let length = file.metadata()?.len();
    let tail_length = length.min(PARTIAL_LINE_SEARCH);
    let mut tail = vec![0; usize::try_from(tail_length).unwrap_or(0)];
    file.read_exact_at(&mut tail, length - tail_length)?;
    if tail.last().is_none_or(|&last| last == b'\n') {
        return Ok(length);
    }
    let keep = tail
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(length - tail_length, |end| length - tail_length + end as u64 + 1);
    file.set_len(keep)?;
    tracing::warn!(
        path = %path.display(),
        bytes = length - keep,
        "cut a partial last line off the output file (a run stopped mid-write)"
    );
    Ok(keep)
}

/// `file.jsonl.N`.
fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Writes events as JSON Lines.
pub struct JsonLinesSink {
    writer: BufWriter<Box<dyn Write + Send>>,
    file: Option<RotatingFile>,
}

impl JsonLinesSink {
    /// Appends to `path` (readable as `access` says, rotating as `rotation` says).
    ///
    /// # Errors
    /// When the file cannot be opened, or `path` is a symbolic link.
    pub fn open(path: &Path, rotation: Rotation, access: FileAccess) -> Result<Self, SinkError> {
        let (file, regular, written) = open_output(path, access)?;
        let mut sink = Self::new(Box::new(file));
        sink.file = Some(RotatingFile {
            path: path.to_owned(),
            rotation,
            access,
            regular,
            written,
            opened: Instant::now(),
        });
        Ok(sink)
    }

    /// Writes to any writer (tests, benchmarks).
    #[must_use]
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self { writer: BufWriter::with_capacity(1 << 16, out), file: None }
    }

    /// Starts a new file when the current one is due, shifting the older ones.
    fn rotate_if_due(&mut self) -> Result<(), SinkError> {
        let Some(file) = &mut self.file else { return Ok(()) };
        let rotation = file.rotation;
        let due = rotation.max_bytes.is_some_and(|max| file.written >= max)
            || rotation.max_age.is_some_and(|max| file.opened.elapsed() >= max);
        if !due {
            return Ok(());
        }
        let shift = |from: &Path, to: &Path| match std::fs::rename(from, to) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SinkError::Open { path: to.to_owned(), source }),
        };
        if rotation.keep == 0 {
            let _ = std::fs::remove_file(&file.path);
        } else {
            let _ = std::fs::remove_file(numbered(&file.path, rotation.keep));
            for n in (1..rotation.keep).rev() {
                shift(&numbered(&file.path, n), &numbered(&file.path, n + 1))?;
            }
            shift(&file.path, &numbered(&file.path, 1))?;
        }
        let (new, regular, written) = open_output(&file.path, file.access)?;
        self.writer = BufWriter::with_capacity(1 << 16, Box::new(new));
        file.regular = regular;
        file.written = written;
        file.opened = Instant::now();
        Ok(())
    }
}

/// Opens an output file (see `open_append`); for a regular file, also a handle to cut it with
/// and its length once a partial last line is cut off.
fn open_output(path: &Path, access: FileAccess) -> Result<(File, Option<File>, u64), SinkError> {
    let file = open_append(path, access)?;
    let open_error = |source| SinkError::Open { path: path.to_owned(), source };
    if !file.metadata().map_err(open_error)?.is_file() {
        return Ok((file, None, 0));
    }
    let written = cut_partial_line(&file, path).map_err(open_error)?;
    let regular = file.try_clone().map_err(open_error)?;
    Ok((file, Some(regular), written))
}

impl JsonLinesSink {
    /// Forgets what a failed batch left in the buffer and cuts the file back to its length
    /// after the last complete batch: the batch is written again whole, so it appears once and
    /// no line is split.
    fn discard_failed_batch(&mut self) {
        let writer = std::mem::replace(&mut self.writer, BufWriter::new(Box::new(io::sink())));
        let (inner, _unwritten) = writer.into_parts();
        self.writer = BufWriter::with_capacity(1 << 16, inner);
        let Some(RotatingFile { regular: Some(regular), written, path, .. }) = &self.file else { return };
        if let Err(error) = regular.set_len(*written) {
            tracing::warn!(path = %path.display(), %error, "cannot cut a failed batch off the output file");
        }
    }
}

impl Deliver for JsonLinesSink {
    /// Writes the batch and flushes it (or, when that fails, takes it back off the file); then
    /// rotates the file when it is due.
    fn deliver(&mut self, batch: &[Queued]) -> Result<(), DeliveryError> {
        let mut bytes = 0u64;
        let written = batch
            .iter()
            .try_for_each(|queued| {
                bytes += queued.line.len() as u64 + 1;
                self.writer.write_all(queued.line.as_bytes())?;
                self.writer.write_all(b"\n")
            })
            .and_then(|()| self.writer.flush());
        if let Err(error) = written {
            self.discard_failed_batch();
            return Err(error.into());
        }
        if let Some(file) = &mut self.file {
            file.written += bytes;
        }
        if let Err(error) = self.rotate_if_due() {
            tracing::warn!(%error, "cannot rotate the output file; writing on to the current one");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{
        event::{EventType, SemanticEvent},
        pipeline::to_json_lines,
        telemetry::Counters,
    };

    fn batch(ids: &[u64]) -> Vec<Queued> {
        let events: Vec<SemanticEvent> = ids
            .iter()
            .map(|&id| {
                let mut event = SemanticEvent::sample(EventType::FilesystemWrite, "/w/f", 1, "t", true);
                event.event_id = id;
                event
            })
            .collect();
        to_json_lines(&events, &Counters::default())
            .into_iter()
            .zip(0..)
            .map(|(line, sequence)| Queued { line, urgent: false, sequence, monotonic_ns: 0 })
            .collect()
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_one_line_per_event() {
        let out = Shared::default();
        let mut sink = JsonLinesSink::new(Box::new(out.clone()));
        sink.deliver(&batch(&[0, 1])).unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let ids: Vec<u64> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["event_id"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(ids, vec![0, 1]);
    }

    #[test]
    fn rotates_between_batches_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotation = Rotation { max_bytes: Some(1), max_age: None, keep: 2 };
        let mut sink = JsonLinesSink::open(&path, rotation, private(0o600)).unwrap();
        for id in 0..4 {
            sink.deliver(&batch(&[id, id + 100])).unwrap();
        }
        let ids = |p: &Path| -> Vec<u64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"].as_u64().unwrap())
                .collect()
        };
        // Every batch rotated: the current file is empty, `.1` holds the last batch, `.2` the one
        // before, and older batches are gone.
        assert_eq!(ids(&path), Vec::<u64>::new());
        assert_eq!(ids(&numbered(&path, 1)), vec![3, 103]);
        assert_eq!(ids(&numbered(&path, 2)), vec![2, 102]);
        assert!(!numbered(&path, 3).exists());
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn private(mode: u32) -> FileAccess {
        FileAccess { mode, group: None }
    }

    #[test]
    fn files_are_private_unless_configured_and_rotated_ones_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotation = Rotation { max_bytes: Some(1), max_age: None, keep: 1 };
        let mut sink = JsonLinesSink::open(&path, rotation, private(0o600)).unwrap();
        sink.deliver(&batch(&[0])).unwrap();
        assert_eq!((mode(&path), mode(&numbered(&path, 1))), (0o600, 0o600));
        // A file that exists with wider permissions is narrowed; a configured mode is kept.
        let shared = dir.path().join("shared.jsonl");
        std::fs::write(&shared, "").unwrap();
        std::fs::set_permissions(&shared, Permissions::from_mode(0o666)).unwrap();
        JsonLinesSink::open(&shared, Rotation::default(), private(0o600)).unwrap();
        assert_eq!(mode(&shared), 0o600);
        JsonLinesSink::open(&shared, Rotation::default(), private(0o640)).unwrap();
        assert_eq!(mode(&shared), 0o640);
        // A device keeps its own mode.
        let null_mode = mode(Path::new("/dev/null"));
        JsonLinesSink::open(Path::new("/dev/null"), Rotation::default(), private(0o600)).unwrap();
        assert_eq!(mode(Path::new("/dev/null")), null_mode);
    }

    #[test]
    fn a_configured_group_owns_the_file_and_its_rotated_ones() {
        use std::os::unix::fs::MetadataExt as _;
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "SKIP a_configured_group_owns_the_file_and_its_rotated_ones: giving a file to another group needs root"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let rotation = Rotation { max_bytes: Some(1), max_age: None, keep: 1 };
        let access = FileAccess { mode: 0o640, group: Some(4242) };
        let mut sink = JsonLinesSink::open(&path, rotation, access).unwrap();
        sink.deliver(&batch(&[0])).unwrap();
        sink.deliver(&batch(&[1])).unwrap();
        for file in [path.clone(), numbered(&path, 1)] {
            let meta = std::fs::metadata(&file).unwrap();
            assert_eq!((meta.gid(), meta.mode() & 0o777), (4242, 0o640), "{}", file.display());
        }
    }

    #[test]
    fn a_symlink_where_the_output_goes_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "precious\n").unwrap();
        let link = dir.path().join("events.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let Err(error) = JsonLinesSink::open(&link, Rotation::default(), private(0o600)) else {
            panic!("opened")
        };
        assert!(matches!(error, SinkError::Symlink { .. }), "{error}");
        assert!(error.to_string().contains("is a symbolic link"), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    }

    #[test]
    fn a_partial_last_line_from_a_killed_run_is_cut_off_not_extended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"event_id\":7}\n{\"event_id\":8,\"trunc").unwrap();
        let mut sink = JsonLinesSink::open(&path, Rotation::default(), private(0o600)).unwrap();
        sink.deliver(&batch(&[9])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, vec![7, 9]);
        // No complete line at all: nothing is kept.
        std::fs::write(&path, "{\"event_id\":8,").unwrap();
        JsonLinesSink::open(&path, Rotation::default(), private(0o600)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
