//! The raft log on disk: append-only segment files of checksummed records, fsync'd (group commit)
//! before openraft is told an append is durable, replayed at start, a torn tail cut off.
//!
//! Why our own: the log is only ever appended, cut at its end (a conflicting suffix) and purged
//! at its start (behind a snapshot); an append-only file does exactly that with one `fdatasync`
//! per group of appends, and its failure modes are few and testable (the probe in
//! shared/notes/openraft.md committed 1.0-1.5 M events/s this way). An embedded database would
//! add a B-tree and its own log under ours.
//!
//! A segment is `segment-<number>.log`: a 16-byte header (`VXRAFTLG`, the format version, 4 bytes
//! reserved), then records: length (u32 LE), CRC-32 of the payload (u32 LE), payload (postcard
//! [`Record`]). Replay reads every segment in order; in the last one, the first record that is
//! short or fails its checksum is where a crash tore the tail: the file is cut there (those
//! appends were never acknowledged, fsync had not returned). The same in an older segment is
//! corruption and refused. A new segment starts with the vote and the purge point, so older
//! segments can be deleted once purged.
//!
//! A write or fsync that fails (a full disk, an I/O error) ends the log's life in this process:
//! the appends it held are not acknowledged, the segment is cut back to the length the last
//! successful fsync covered (after a failed fsync the kernel may have dropped or marked clean
//! pages it never wrote, so what lies past that point cannot be trusted, not even to read), and
//! every later write is refused without touching the disk: an fsync is never tried again and its
//! success taken to mean the earlier data is safe ("fsyncgate"). openraft stops the raft node on
//! the storage error; restarted, the member replays what is on disk and catches up from the
//! leader. The data directory's reserve (`disk`) keeps a full disk from getting this far.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    fs::{File, OpenOptions},
    ops::RangeBounds,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use openraft::{
    Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote,
    storage::{LogFlushed, RaftLogStorage},
};
use serde::{Deserialize, Serialize};

use super::{RaftId, TypeConfig};

const MAGIC: &[u8; 8] = b"VXRAFTLG";
/// Version of the segment format (2: events in the binary encoding of `codec`; 1 held JSON
/// lines); a segment of another version is refused.
pub const FORMAT_VERSION: u32 = 2;
const HEADER_LEN: usize = 16;
const HEADER_BYTES: u64 = HEADER_LEN as u64;
const RECORD_HEAD: usize = 8;
/// Largest record: an entry is capped at 65,536 events (config), far below this.
pub const RECORD_MAX: usize = 256 << 20;
/// A segment is closed (and a new one started) once it holds this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Why the log cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("replicated log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replicated log {path}: not a vexevent log segment (bad header)")]
    NotALog { path: PathBuf },
    #[error("replicated log {path}: format version {version}, this vexevent reads {FORMAT_VERSION}")]
    Version { path: PathBuf, version: u32 },
    #[error(
        "replicated log {path}: record at byte {offset} is damaged in a closed segment (not a torn tail); move the data directory away to rejoin empty"
    )]
    Corrupt { path: PathBuf, offset: u64 },
    #[error("log index {index} is compacted; the first retained index is {first}")]
    Compacted { index: u64, first: u64 },
}

/// One record, as read back.
#[derive(Deserialize)]
enum Record {
    Entry(Entry<TypeConfig>),
    Vote(Vote<RaftId>),
    /// Entries from this index on are gone (a conflicting suffix).
    Truncate(u64),
    /// Entries up to this one are gone (behind a snapshot).
    Purge(LogId<RaftId>),
}

/// One record, as written (the same encoding as [`Record`], without copying the entry).
#[derive(Serialize)]
enum RecordRef<'a> {
    Entry(&'a Entry<TypeConfig>),
    Vote(&'a Vote<RaftId>),
    Truncate(u64),
    Purge(&'a LogId<RaftId>),
}

/// Where one entry is.
#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
    log_id: LogId<RaftId>,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Highest entry index written in it.
    last_entry: Option<u64>,
    /// Its length the last successful fsync covered (changed with the [`Inner::failed`] lock held).
    synced: Arc<AtomicU64>,
}

/// Appends waiting for the flusher's `fdatasync`.
struct Flush {
    file: Arc<File>,
    path: PathBuf,
    /// The segment's length once they were written, and how far it is durable.
    len: u64,
    synced: Arc<AtomicU64>,
    done: LogFlushed<TypeConfig>,
}

/// The first failed write or fsync (shared with the flusher).
type Failure = Arc<Mutex<Option<String>>>;

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to, and its length.
    current: u64,
    current_len: u64,
    entries: BTreeMap<u64, Location>,
    vote: Option<Vote<RaftId>>,
    last_purged: Option<LogId<RaftId>>,
    flusher: mpsc::Sender<Flush>,
    /// Set at the first failed write or fsync; from then on nothing is written.
    failed: Failure,
}

/// The raft log (clones share it).
#[derive(Clone, Debug)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Flush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flush")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_owned(), source }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("segment-{number:016}.log"))
}

fn header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// A record framed: length, checksum, payload.
fn frame(record: &RecordRef<'_>) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = vec![0u8; RECORD_HEAD];
    bytes = postcard::to_extend(record, bytes)?;
    let payload_len =
        u32::try_from(bytes.len() - RECORD_HEAD).map_err(|_| postcard::Error::SerializeBufferFull)?;
    let crc = crc32fast::hash(&bytes[RECORD_HEAD..]);
    bytes[..4].copy_from_slice(&payload_len.to_le_bytes());
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

/// The record at `offset` of `bytes` and its framed length; `None` when it is short, too long,
/// fails its checksum or does not decode.
fn unframe(bytes: &[u8], offset: usize) -> Option<(Record, usize)> {
    let head = bytes.get(offset..offset + RECORD_HEAD)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    if len > RECORD_MAX {
        return None;
    }
    let payload = bytes.get(offset + RECORD_HEAD..offset + RECORD_HEAD + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((postcard::from_bytes(payload).ok()?, RECORD_HEAD + len))
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, replaying its segments; a torn tail of the last one
    /// is cut off. Starts the flusher thread.
    ///
    /// # Errors
    /// An unreadable directory or segment, a segment of another format, damage in a closed
    /// segment.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut numbers: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name();
                name.to_str()?.strip_prefix("segment-")?.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        numbers.sort_unstable();
        let (flusher, waiting) = mpsc::channel();
        let failed = Failure::default();
        let failure = Arc::clone(&failed);
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(&waiting, &failure))
            .map_err(io(dir))?;
        let mut inner = Inner {
            dir: dir.to_owned(),
            segments: BTreeMap::new(),
            current: 0,
            current_len: 0,
            entries: BTreeMap::new(),
            vote: None,
            last_purged: None,
            flusher,
            failed,
        };
        let last = numbers.last().copied();
        for number in numbers {
            inner.replay(number, Some(number) == last)?;
        }
        if inner.segments.is_empty() {
            inner.start_segment(1)?;
        }
        Ok(Self { inner: Arc::new(Mutex::new(inner)) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The first write or fsync that failed (the log takes no more writes), if one did.
    #[must_use]
    pub fn failed(&self) -> Option<String> {
        lock(&self.lock().failed).clone()
    }

    /// The first index still in the log (after the purged ones), and the last.
    #[must_use]
    pub fn bounds(&self) -> (u64, Option<u64>) {
        let inner = self.lock();
        let first = inner.last_purged.map_or(0, |id| id.index + 1);
        (inner.entries.keys().next().copied().unwrap_or(first), inner.entries.keys().next_back().copied())
    }

    /// Entries `from..=to` (those present), refusing an index already compacted.
    ///
    /// # Errors
    /// `from` below the first retained index; a segment that cannot be read.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<Entry<TypeConfig>>, LogError> {
        let inner = self.lock();
        let first = inner.entries.keys().next().copied().or(inner.last_purged.map(|id| id.index + 1));
        if let Some(first) = first.filter(|&first| from < first) {
            return Err(LogError::Compacted { index: from, first });
        }
        if from > to {
            return Ok(Vec::new());
        }
        inner.entries.range(from..=to).map(|(_, location)| inner.read_entry(location)).collect()
    }
}

impl Inner {
    /// Replays segment `number`; `last`: a damaged record is a torn tail, cut off.
    fn replay(&mut self, number: u64, last: bool) -> Result<(), LogError> {
        let path = segment_path(&self.dir, number);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io(&path))?;
        if bytes.len() < HEADER_LEN && last {
            // Torn while being created: nothing in it was ever acknowledged.
            tracing::warn!(path = %path.display(), "the last log segment has no complete header; starting it again");
            file.set_len(0).map_err(io(&path))?;
            file.write_all_at(&header(), 0).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
            self.adopt(number, file, path, HEADER_BYTES);
            return Ok(());
        }
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(LogError::NotALog { path });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
        if version != FORMAT_VERSION {
            return Err(LogError::Version { path, version });
        }
        let mut offset = HEADER_LEN;
        let mut last_entry = None;
        while offset < bytes.len() {
            let Some((record, len)) = unframe(&bytes, offset) else {
                if !last {
                    return Err(LogError::Corrupt { path, offset: offset as u64 });
                }
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    bytes_cut = bytes.len() - offset,
                    "the replicated log ends in a torn record (a crash during an append that was never acknowledged); cut off"
                );
                file.set_len(offset as u64).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
                break;
            };
            match record {
                Record::Entry(entry) => {
                    let index = entry.log_id.index;
                    self.entries.split_off(&index);
                    let len = u32::try_from(len).unwrap_or(u32::MAX);
                    self.entries.insert(
                        index,
                        Location { segment: number, offset: offset as u64, len, log_id: entry.log_id },
                    );
                    last_entry = Some(index);
                }
                Record::Vote(vote) => self.vote = Some(vote),
                Record::Truncate(index) => {
                    self.entries.split_off(&index);
                }
                Record::Purge(log_id) => self.purged(log_id),
            }
            offset += len;
        }
        self.adopt(number, file, path, offset as u64);
        if let Some(segment) = self.segments.get_mut(&number) {
            segment.last_entry = last_entry;
        }
        Ok(())
    }

    /// Makes segment `number` (of `len` bytes) the current one.
    fn adopt(&mut self, number: u64, file: File, path: PathBuf, len: u64) {
        let synced = Arc::new(AtomicU64::new(len));
        self.segments.insert(number, Segment { file: Arc::new(file), path, last_entry: None, synced });
        self.current = number;
        self.current_len = len;
    }

    /// Forgets the entries up to `log_id`.
    fn purged(&mut self, log_id: LogId<RaftId>) {
        self.entries = self.entries.split_off(&(log_id.index + 1));
        self.last_purged = Some(log_id);
    }

    /// Starts segment `number`: the header, then the vote and the purge point (so the older
    /// segments can go), durable before anything is appended to it.
    fn start_segment(&mut self, number: u64) -> Result<(), LogError> {
        let path = segment_path(&self.dir, number);
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(io(&path))?;
        let mut bytes = header().to_vec();
        let encode = |record: &RecordRef<'_>| {
            frame(record).map_err(|e| LogError::Io { path: path.clone(), source: std::io::Error::other(e) })
        };
        if let Some(vote) = &self.vote {
            bytes.extend(encode(&RecordRef::Vote(vote))?);
        }
        if let Some(purged) = &self.last_purged {
            bytes.extend(encode(&RecordRef::Purge(purged))?);
        }
        file.write_all_at(&bytes, 0).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        if let Ok(dir) = File::open(&self.dir) {
            dir.sync_all().map_err(io(&self.dir))?;
        }
        self.adopt(number, file, path, bytes.len() as u64);
        Ok(())
    }

    /// Writes one record at the end of the current segment (not yet durable); where it is.
    /// Refused once a write or fsync failed; a failure here is the log's last.
    fn write(&mut self, record: &RecordRef<'_>) -> std::io::Result<(u64, u64, u32)> {
        refuse_after_failure(&self.failed)?;
        let bytes = frame(record).map_err(std::io::Error::other)?;
        let offset = self.write_at_end(&bytes).map_err(|error| self.fail(error))?;
        self.current_len += bytes.len() as u64;
        Ok((self.current, offset, u32::try_from(bytes.len()).unwrap_or(u32::MAX)))
    }

    /// Writes `bytes` at the end of the current segment (a new one when it is full); where.
    fn write_at_end(&mut self, bytes: &[u8]) -> std::io::Result<u64> {
        if self.current_len + bytes.len() as u64 > SEGMENT_BYTES && self.current_len > HEADER_BYTES {
            self.sync_current()?;
            self.start_segment(self.current + 1).map_err(std::io::Error::other)?;
        }
        let offset = self.current_len;
        self.current_file().write_all_at(bytes, offset)?;
        Ok(offset)
    }

    fn current_file(&self) -> Arc<File> {
        Arc::clone(&self.segments[&self.current].file)
    }

    /// fsyncs the current segment and records how far it is durable.
    fn sync_current(&self) -> std::io::Result<()> {
        let segment = &self.segments[&self.current];
        segment.file.sync_data()?;
        let failed = lock(&self.failed);
        refuse_after_failure_locked(failed.as_ref())?;
        segment.synced.fetch_max(self.current_len, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `record` and waits until it is on disk.
    fn write_durable(&mut self, record: &RecordRef<'_>) -> std::io::Result<()> {
        self.write(record)?;
        self.sync_current().map_err(|error| self.fail(error))
    }

    /// The current segment's write or fsync failed: no more writes, its untrusted tail cut off.
    fn fail(&mut self, error: std::io::Error) -> std::io::Error {
        let segment = &self.segments[&self.current];
        fail(&self.failed, &segment.file, &segment.path, &segment.synced, &error);
        let durable = segment.synced.load(Ordering::Relaxed);
        self.current_len = self.current_len.min(durable);
        // What was cut off is not there to read (it was never acknowledged).
        let current = self.current;
        self.entries.retain(|_, location| location.segment != current || location.offset < durable);
        error
    }

    fn read_entry(&self, location: &Location) -> Result<Entry<TypeConfig>, LogError> {
        let segment = &self.segments[&location.segment];
        let mut bytes = vec![0u8; location.len as usize];
        segment.file.read_exact_at(&mut bytes, location.offset).map_err(io(&segment.path))?;
        match unframe(&bytes, 0) {
            Some((Record::Entry(entry), _)) => Ok(entry),
            _ => Err(LogError::Corrupt { path: segment.path.clone(), offset: location.offset }),
        }
    }

    /// Deletes the oldest segments that hold only purged entries (never the current one).
    fn delete_purged_segments(&mut self) {
        let Some(purged) = self.last_purged.map(|id| id.index) else { return };
        while let Some((&number, segment)) = self.segments.first_key_value() {
            if number == self.current || segment.last_entry.is_some_and(|last| last > purged) {
                break;
            }
            if let Err(error) = std::fs::remove_file(&segment.path) {
                tracing::warn!(path = %segment.path.display(), %error, "cannot delete a purged log segment");
                break;
            }
            self.segments.remove(&number);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refuse_after_failure_locked(failed: Option<&String>) -> std::io::Result<()> {
    match failed {
        Some(first) => Err(std::io::Error::other(format!(
            "the raft log takes no more writes after a failed write or fsync ({first}); restart this member"
        ))),
        None => Ok(()),
    }
}

fn refuse_after_failure(failed: &Failure) -> std::io::Result<()> {
    refuse_after_failure_locked(lock(failed).as_ref())
}

/// Records the first failure and cuts `file` back to what its last successful fsync covered
/// (with the failure lock held, so no fsync is acknowledged past the cut).
fn fail(failed: &Failure, file: &File, path: &Path, synced: &AtomicU64, error: &std::io::Error) {
    let mut first = lock(failed);
    if first.is_some() {
        return;
    }
    *first = Some(format!("{}: {error}", path.display()));
    let durable = synced.load(Ordering::Relaxed);
    tracing::error!(
        path = %path.display(),
        %error,
        durable_bytes = durable,
        "cluster: a write or fsync of the raft log failed; nothing more is written (restart this member once the cause is fixed)"
    );
    if let Err(error) = file.set_len(durable).and_then(|()| file.sync_all()) {
        tracing::error!(path = %path.display(), %error, "cluster: cannot cut the raft log back to its durable length");
    }
}

/// The flusher: takes every append waiting, syncs each file they wrote once, then tells
/// openraft they are durable (group commit). After a failed fsync it syncs nothing again: every
/// later append is answered with the failure.
fn flush_loop(flushes: &mpsc::Receiver<Flush>, failed: &Failure) {
    while let Ok(first) = flushes.recv() {
        let mut group = vec![first];
        group.extend(flushes.try_iter());
        let mut synced: Vec<(*const File, Result<(), std::io::ErrorKind>)> = Vec::new();
        for flush in group {
            let key = Arc::as_ptr(&flush.file);
            let result = if let Some((_, result)) = synced.iter().find(|(file, _)| *file == key) {
                *result
            } else {
                let result =
                    refuse_after_failure(failed).and_then(|()| flush.file.sync_data()).map_err(|error| {
                        fail(failed, &flush.file, &flush.path, &flush.synced, &error);
                        error.kind()
                    });
                synced.push((key, result));
                result
            };
            // Durable only if no failure cut the file meanwhile.
            let result = result.map_err(std::io::Error::from).and_then(|()| {
                let failed = lock(failed);
                refuse_after_failure_locked(failed.as_ref())?;
                flush.synced.fetch_max(flush.len, Ordering::Relaxed);
                Ok(())
            });
            flush.done.log_io_completed(result);
        }
    }
}

/// Runs a write that waits for the disk (fsync) without stalling the runtime: on a loaded disk
/// an fsync can take long enough that heartbeats and votes on the same worker would miss their
/// timeouts. The member's runtime is multi-threaded; elsewhere (tests) it runs in place.
fn durably<T>(write: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(write)
        }
        _ => write(),
    }
}

fn write_error(error: &std::io::Error) -> StorageError<RaftId> {
    StorageIOError::write_logs(error).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<RaftId>> {
        let inner = self.lock();
        inner
            .entries
            .range(range)
            .map(|(_, location)| inner.read_entry(location))
            .collect::<Result<_, _>>()
            .map_err(|error| StorageIOError::read_logs(&error).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<RaftId>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|location| location.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> Result<(), StorageError<RaftId>> {
        let mut inner = self.lock();
        durably(|| inner.write_durable(&RecordRef::Vote(vote)))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftId>>, StorageError<RaftId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<RaftId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        for entry in entries {
            let (segment, offset, len) =
                inner.write(&RecordRef::Entry(&entry)).map_err(|e| write_error(&e))?;
            let index = entry.log_id.index;
            inner.entries.insert(index, Location { segment, offset, len, log_id: entry.log_id });
            if let Some(segment) = inner.segments.get_mut(&segment) {
                segment.last_entry = Some(index);
            }
        }
        let segment = &inner.segments[&inner.current];
        let flush = Flush {
            file: Arc::clone(&segment.file),
            path: segment.path.clone(),
            len: inner.current_len,
            synced: Arc::clone(&segment.synced),
            done: callback,
        };
        if let Err(mpsc::SendError(flush)) = inner.flusher.send(flush) {
            // The flusher is gone (it never stops while the store lives): sync here.
            let result = inner.sync_current().map_err(|error| inner.fail(error));
            flush.done.log_io_completed(result);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> Result<(), StorageError<RaftId>> {
        let mut inner = self.lock();
        durably(|| inner.write_durable(&RecordRef::Truncate(log_id.index))).map_err(|e| write_error(&e))?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> Result<(), StorageError<RaftId>> {
        let mut inner = self.lock();
        durably(|| inner.write_durable(&RecordRef::Purge(&log_id))).map_err(|e| write_error(&e))?;
        inner.purged(log_id);
        inner.delete_purged_segments();
        Ok(())
    }
}

#[cfg(test)]
impl LogStore {
    /// Appends through the store's own write path and syncs (what `append` and the flusher do,
    /// without openraft's callback).
    pub(super) fn append_synced(&self, entries: &[Entry<TypeConfig>]) {
        let mut inner = self.lock();
        for entry in entries {
            let (segment, offset, len) = inner.write(&RecordRef::Entry(entry)).unwrap();
            inner.entries.insert(entry.log_id.index, Location { segment, offset, len, log_id: entry.log_id });
            inner.segments.get_mut(&segment).unwrap().last_entry = Some(entry.log_id.index);
        }
        inner.sync_current().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::replicate::Proposal;

    fn entry(index: u64, term: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Proposal {
                node: "n1".into(),
                run: 7,
                batch: index,
                count: 1,
                events: bytes::Bytes::from(format!("{{\"i\":{index}}}\n")),
            }),
        }
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        let (first, last) = store.bounds();
        store.read(first, last.unwrap_or(0)).unwrap().iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_log_keeps_working() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        store.append_synced(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>());
        let vote = Vote::new(3, 2);
        store.lock().write_durable(&RecordRef::Vote(&vote)).unwrap();
        drop(store);
        let path = segment_path(dir.path(), 1);
        let whole = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of appending entry 6: half its record reached the disk.
        let mut torn = frame(&RecordRef::Entry(&entry(6, 1))).unwrap();
        torn.truncate(torn.len() / 2);
        OpenOptions::new().append(true).open(&path).unwrap().write_all_at(&torn, whole).unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), vec![1, 2, 3, 4, 5]);
        assert_eq!(store.lock().vote, Some(vote), "the vote survives");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole, "the torn record is cut off");
        store.append_synced(&[entry(6, 1)]);
        drop(store);
        assert_eq!(indexes(&LogStore::open(dir.path()).unwrap()), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_flipped_bit_in_the_last_record_is_a_torn_tail_and_in_a_closed_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        store.append_synced(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>());
        drop(store);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            indexes(&LogStore::open(dir.path()).unwrap()),
            vec![1, 2],
            "the damaged last record is cut"
        );
        // The same damage in a segment that is not the last one is corruption.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(segment_path(dir.path(), 2), header()).unwrap();
        assert!(matches!(LogStore::open(dir.path()), Err(LogError::Corrupt { .. })));
    }

    /// A small tmpfs, unmounted when dropped.
    struct SmallDisk(PathBuf);

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn a_write_that_finds_the_disk_full_ends_the_log_and_keeps_only_what_was_durable() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "SKIP a_write_that_finds_the_disk_full_ends_the_log_and_keeps_only_what_was_durable: mounting a small tmpfs needs root"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = SmallDisk(dir.path().join("disk"));
        std::fs::create_dir(&disk.0).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=512k", "vexevent-test"])
            .arg(&disk.0)
            .status()
            .unwrap();
        assert!(mounted.success());
        let store = LogStore::open(&disk.0.join("log")).unwrap();
        store.append_synced(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>());
        let path = segment_path(&disk.0.join("log"), 1);
        let durable = std::fs::metadata(&path).unwrap().len();
        let large = |index| {
            let mut entry = entry(index, 1);
            if let EntryPayload::Normal(proposal) = &mut entry.payload {
                proposal.events = bytes::Bytes::from(vec![b'x'; 16 << 10]);
            }
            entry
        };
        // Written, not yet fsync'd (the flusher has not run), until the disk is full.
        let error = {
            let mut inner = store.lock();
            (4..).find_map(|index| inner.write(&RecordRef::Entry(&large(index))).err()).unwrap()
        };
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
        assert!(store.failed().is_some_and(|first| first.contains("No space left")), "{:?}", store.failed());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), durable, "cut back to what was fsync'd");
        assert_eq!(indexes(&store), vec![1, 2, 3], "what was cut off is not served");
        // The cut freed space; still nothing is written (no fsync is tried again as if it were safe).
        assert!(crate::replicate::disk::free_bytes(&disk.0).unwrap() > 16 << 10);
        let refused = store.lock().write_durable(&RecordRef::Vote(&Vote::new(9, 1))).unwrap_err();
        assert!(refused.to_string().contains("takes no more writes"), "{refused}");
    }

    #[test]
    fn a_failed_log_takes_no_more_writes_and_a_reopened_one_keeps_the_durable_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        store.append_synced(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>());
        let path = segment_path(dir.path(), 1);
        let durable = std::fs::metadata(&path).unwrap().len();
        {
            let mut inner = store.lock();
            inner.write(&RecordRef::Entry(&entry(4, 1))).unwrap();
            // As the flusher does when an fsync fails: the not yet durable tail is cut.
            let error = inner.fail(std::io::Error::from_raw_os_error(libc::EIO));
            assert_eq!(error.raw_os_error(), Some(libc::EIO));
            assert!(inner.write(&RecordRef::Entry(&entry(5, 1))).is_err(), "nothing is written after it");
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), durable);
        assert_eq!(indexes(&store), vec![1, 2, 3]);
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.failed(), None, "a new life");
        assert_eq!(indexes(&store), vec![1, 2, 3]);
        store.append_synced(&[entry(4, 2)]);
        assert_eq!(indexes(&store), vec![1, 2, 3, 4]);
    }

    #[test]
    fn truncate_purge_and_versions_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        store.append_synced(&(1..=6).map(|i| entry(i, 1)).collect::<Vec<_>>());
        {
            let mut inner = store.lock();
            inner.write_durable(&RecordRef::Truncate(5)).unwrap();
            inner.entries.split_off(&5);
            let purge = LogId::new(CommittedLeaderId::new(1, 1), 2);
            inner.write_durable(&RecordRef::Purge(&purge)).unwrap();
            inner.purged(purge);
        }
        store.append_synced(&[entry(5, 2)]);
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), vec![3, 4, 5]);
        assert_eq!(
            store.read(5, 5).unwrap()[0].log_id.leader_id.term,
            2,
            "the conflicting entry is replaced"
        );
        assert!(
            matches!(store.read(1, 5), Err(LogError::Compacted { index: 1, first: 3 })),
            "a compacted index is refused with the first retained one"
        );
        assert!(store.read(9, 8).unwrap().is_empty(), "past the end: nothing");
        drop(store);
        let mut bytes = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        bytes[8] = 9;
        std::fs::write(segment_path(dir.path(), 1), bytes).unwrap();
        assert!(matches!(LogStore::open(dir.path()), Err(LogError::Version { version: 9, .. })));
    }
}
