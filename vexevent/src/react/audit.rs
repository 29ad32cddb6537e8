//! The append-only audit log of what rules decided and did: one JSON line per decision,
//! outcome and rollback, each carrying the SHA-256 of the line before it (`prev`) and its own
//! (`hash`, over `prev` and the line without its hash), so an edited or removed line breaks the
//! chain (`vexevent audit verify FILE`). Appends are serialized between processes with `flock`
//! (the running instance and `vexevent rollback` both append) and synced to disk.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest audit line read back (a line is a few hundred bytes).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Why the audit log cannot be written or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {path}, line {line}: {problem}")]
    Broken { path: PathBuf, line: usize, problem: String },
}

/// What an audit line records.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// `decision`, `outcome` or `rollback`.
    pub record: String,
    pub rule: String,
    /// `signal`, `run`, `quarantine`, `chmod`, `xattr`.
    pub action: String,
    /// The detection event's id.
    pub detection_id: u64,
    /// What the action is aimed at (`pid 123 (comm)`, a path).
    pub target: String,
    /// `decided`, `dry_run`, `rate_limited`, `done`, `failed`, `timeout`, ...
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// How to undo it (outcome lines of reversible actions that ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Undo>,
    /// The line a rollback undoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolls_back: Option<u64>,
}

/// How to undo an action.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Undo {
    /// SIGCONT the stopped process, if it is still the same one (start time).
    Resume { pid: u32, start_time: u64 },
    /// Move the file back from quarantine.
    Restore { from: String, to: String },
    /// Set the mode back.
    Mode { path: String, mode: u32 },
    /// Set the extended attribute back to its old value (base64), or remove it if it had none.
    Xattr { path: String, name: String, old: Option<String> },
}

/// One line: its place in the chain and its record.
#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    at_unix_ms: u64,
    prev: String,
    #[serde(flatten)]
    record: AuditRecord,
}

/// A written line: its sequence number and hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub seq: u64,
    pub hash: String,
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    context.finish().as_ref().iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
        hex
    })
}

/// The line's body (without its hash) and its hash, when it has the shape this module writes.
fn split_line(line: &str) -> Option<(&str, &str)> {
    let start = line.rfind(",\"hash\":\"")?;
    let hash = line[start..].strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    Some((&line[..start], hash))
}

/// An open audit log.
pub struct AuditLog {
    path: PathBuf,
    file: File,
}

impl AuditLog {
    /// Opens (creating 0600, never following a link) the log at `path`.
    ///
    /// # Errors
    /// When the file or its directory cannot be created or opened.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        Ok(Self { path: path.to_owned(), file })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` after the log's current last line (read under the lock, so another
    /// process's appends are chained too).
    ///
    /// # Errors
    /// When the log cannot be locked, read or written.
    pub fn append(&mut self, record: AuditRecord) -> Result<Written, AuditError> {
        // SAFETY: flock on a file descriptor this struct owns.
        let result = if unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            let result = self.append_locked(record);
            // SAFETY: as above; closing would release it too.
            unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
            result
        } else {
            Err(std::io::Error::last_os_error())
        };
        result.map_err(|source| AuditError::Io { path: self.path.clone(), source })
    }

    fn append_locked(&mut self, record: AuditRecord) -> std::io::Result<Written> {
        let (seq, prev) = match last_line(&mut self.file)? {
            Some(line) => {
                let parsed: Option<(u64, String)> = split_line(&line).and_then(|(body, hash)| {
                    let line: Line = serde_json::from_str(&format!("{body}}}")).ok()?;
                    Some((line.seq + 1, hash.to_owned()))
                });
                parsed.ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "the last line is not an audit line")
                })?
            }
            None => (1, GENESIS.to_owned()),
        };
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let body = serde_json::to_string(&Line { seq, at_unix_ms, prev: prev.clone(), record })?;
        let body = body.strip_suffix('}').unwrap_or(&body);
        let hash = sha256_hex(&[prev.as_bytes(), body.as_bytes()]);
        self.file.write_all(format!("{body},\"hash\":\"{hash}\"}}\n").as_bytes())?;
        self.file.sync_data()?;
        Ok(Written { seq, hash })
    }
}

/// The file's last line (without its newline), read from its end.
fn last_line(file: &mut File) -> std::io::Result<Option<String>> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(MAX_LINE_BYTES as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(len - start).read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    let text = text.trim_end_matches('\n');
    Ok(Some(text.rsplit('\n').next().unwrap_or(text).to_owned()))
}

/// A line's fields, its body (without its hash) and its hash.
fn parse_line(raw: &[u8]) -> Result<(Line, &str, &str), String> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8: not an audit line".to_owned())?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let (body, hash) = split_line(text).ok_or_else(|| "not an audit line".to_owned())?;
    let line: Line =
        serde_json::from_str(&format!("{body}}}")).map_err(|e| format!("not an audit line: {e}"))?;
    Ok((line, body, hash))
}

/// The complete lines written to the log at `path` after byte `offset` (not verified: lines
/// that are not audit lines are skipped), and the offset after the last of them; what another
/// process (`vexevent rollback`) appended is followed this way.
///
/// # Errors
/// When the log cannot be read.
pub fn lines_after(path: &Path, offset: u64) -> Result<(Vec<Verified>, u64), AuditError> {
    let io = |source| AuditError::Io { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(io)?;
    let len = file.seek(SeekFrom::End(0)).map_err(io)?;
    if len <= offset {
        return Ok((Vec::new(), len.min(offset)));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut reader = BufReader::new(file.take(len - offset));
    let (mut lines, mut raw, mut at) = (Vec::new(), Vec::new(), offset);
    loop {
        raw.clear();
        let read =
            Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut raw).map_err(io)?;
        let whole = raw.last() == Some(&b'\n');
        if read == 0 || (!whole && raw.len() <= MAX_LINE_BYTES) {
            // The end, or a line still being written (read again next time).
            return Ok((lines, at));
        }
        at += read as u64;
        if let Some((line, _, hash)) = parse_line(&raw).ok().filter(|_| whole) {
            lines.push(Verified { seq: line.seq, hash: hash.to_owned(), record: line.record });
        }
    }
}

/// A line of the log, verified.
#[derive(Debug)]
pub struct Verified {
    pub seq: u64,
    pub hash: String,
    pub record: AuditRecord,
}

/// Reads and verifies the whole log: each line's hash, its `prev` (the line before's hash) and
/// its sequence number (the line before's plus one).
///
/// # Errors
/// The first line that breaks the chain, or a read error.
pub fn verify(path: &Path) -> Result<Vec<Verified>, AuditError> {
    let io = |source| AuditError::Io { path: path.to_owned(), source };
    let broken = |line: usize, problem: String| AuditError::Broken { path: path.to_owned(), line, problem };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut lines = Vec::new();
    let mut prev = GENESIS.to_owned();
    let mut raw = Vec::new();
    let mut number = 0;
    loop {
        // Each line read with a bound: a file that is not an audit log cannot exhaust memory.
        raw.clear();
        let read =
            Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut raw).map_err(io)?;
        if read == 0 {
            break;
        }
        number += 1;
        if raw.len() > MAX_LINE_BYTES {
            return Err(broken(number, format!("longer than {MAX_LINE_BYTES} bytes: not an audit line")));
        }
        let (line, body, hash) = parse_line(&raw).map_err(|problem| broken(number, problem))?;
        if line.prev != prev {
            return Err(broken(
                number,
                "`prev` is not the previous line's hash: a line was removed or edited".into(),
            ));
        }
        if sha256_hex(&[prev.as_bytes(), body.as_bytes()]) != hash {
            return Err(broken(number, "the hash does not match the line: it was edited".into()));
        }
        let expected = lines.last().map_or(1, |l: &Verified| l.seq + 1);
        if line.seq != expected {
            return Err(broken(
                number,
                format!("sequence {} where {expected} was due: a line was removed", line.seq),
            ));
        }
        hash.clone_into(&mut prev);
        lines.push(Verified { seq: line.seq, hash: hash.to_owned(), record: line.record });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: &str) -> AuditRecord {
        AuditRecord {
            record: "outcome".into(),
            rule: "r".into(),
            outcome: outcome.into(),
            ..AuditRecord::default()
        }
    }

    #[test]
    fn lines_after_an_offset_are_the_complete_lines_appended_since() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open(&path).unwrap();
        log.append(record("a")).unwrap();
        let start = std::fs::metadata(&path).unwrap().len();
        // Another writer's lines, then one still being written.
        AuditLog::open(&path).unwrap().append(record("b")).unwrap();
        log.append(record("c")).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":4,").unwrap();
        let (lines, at) = lines_after(&path, start).unwrap();
        assert_eq!(
            lines.iter().map(|l| (l.seq, l.record.outcome.as_str())).collect::<Vec<_>>(),
            [(2, "b"), (3, "c")]
        );
        assert_eq!(at, std::fs::metadata(&path).unwrap().len() - 9, "the partial line is read next time");
        assert!(lines_after(&path, at).unwrap().0.is_empty());
    }

    #[test]
    fn a_line_past_the_bound_is_refused_without_reading_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.log");
        std::fs::write(&path, vec![b'x'; 10 * MAX_LINE_BYTES]).unwrap();
        let error = verify(&path).unwrap_err().to_string();
        assert!(error.contains("longer than") && error.contains("line 1"), "{error}");
    }

    #[test]
    fn an_edited_or_removed_line_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open(&path).unwrap();
        for outcome in ["a", "b", "c"] {
            log.append(record(outcome)).unwrap();
        }
        // A second writer (as `vexevent rollback` is) continues the same chain.
        let written = AuditLog::open(&path).unwrap().append(record("d")).unwrap();
        assert_eq!(written.seq, 4);
        let lines = verify(&path).unwrap();
        assert_eq!(lines.iter().map(|l| l.record.outcome.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(lines[3].hash, written.hash);

        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replacen("\"outcome\":\"b\"", "\"outcome\":\"x\"", 1);
        std::fs::write(&path, &edited).unwrap();
        let error = verify(&path).unwrap_err().to_string();
        assert!(error.contains("line 2") && error.contains("edited"), "{error}");

        let removed: Vec<&str> = text.lines().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| l).collect();
        std::fs::write(&path, removed.join("\n") + "\n").unwrap();
        let error = verify(&path).unwrap_err().to_string();
        assert!(error.contains("line 2") && error.contains("removed"), "{error}");
    }
}
