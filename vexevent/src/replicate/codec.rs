//! The binary encoding of a log entry's events (log format 2): compact on disk and on the wire,
//! and quick to read back on every member (format 1 held JSON lines, about 600 bytes an event,
//! and decoding them took much of a member's time).
//!
//! The events of one entry are encoded one after the other by one [`Encoder`], which keeps state
//! across them: an entry reads back whole and in order only.
//! - Integers are LEB128 varints, signed ones zigzag. The event id, the wall and monotonic times
//!   and the kernel sequence numbers are differences from the previous event of the entry.
//! - Strings and short byte strings that repeat (subtypes, task names, errno names, modes, node
//!   names) are interned: the first time a varint 0 and the bytes, then their place in the
//!   entry's table plus one.
//! - A path is the number of bytes it shares with the previous event's path, then the rest.
//! - What the write path rarely carries (the contexts other than `filesystem`, the timeline,
//!   causality links) is one JSON object when any of it is there.
//!
//! Each struct is taken apart field by field (no `..`), so a field added to an event does not
//! compile until it has its place here.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::event::{
    Context, EventType, FileType, FilesystemContext, NodeId, OpResult, Origin, PathBytes, Priority,
    ProcessInfo, Run, SemanticEvent, Timeline, Timestamp,
};

/// Why an entry's events do not read back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("the entry ends inside an event")]
    Truncated,
    #[error("invalid {what} in an entry")]
    Invalid { what: &'static str },
    #[error("the rare fields of an event do not decode: {source}")]
    Rest {
        #[source]
        source: serde_json::Error,
    },
}

// Bits of an event's presence mask.
const PARENT: u32 = 1;
const PROCESS: u32 = 1 << 1;
const RESULT: u32 = 1 << 2;
const FILESYSTEM: u32 = 1 << 3;
const REST: u32 = 1 << 4;
/// The origin's run differs from the previous event's: its node and id follow.
const NEW_RUN: u32 = 1 << 5;
/// `event_type_code` is not the code of `event_type`: it follows.
const OTHER_CODE: u32 = 1 << 6;
/// The event carries a hybrid logical clock (`causal`): it follows, as a delta against the
/// previous clock of the entry.
const HLC: u32 = 1 << 7;

// Bits of a filesystem context's presence mask.
const FS_PATH: u32 = 1;
const FS_TRUNCATED: u32 = 1 << 1;
const FS_INODE: u32 = 1 << 2;
const FS_TYPE: u32 = 1 << 3;
const FS_TARGET: u32 = 1 << 4;
const FS_XATTR: u32 = 1 << 5;
const FS_FD: u32 = 1 << 6;
const FS_BYTES: u32 = 1 << 7;
const FS_OFFSET: u32 = 1 << 8;
const FS_MODE: u32 = 1 << 9;
const FS_UID: u32 = 1 << 10;
const FS_GID: u32 = 1 << 11;
const FS_SIZE: u32 = 1 << 12;

const FILE_TYPES: [FileType; 7] = [
    FileType::Regular,
    FileType::Directory,
    FileType::Symlink,
    FileType::Fifo,
    FileType::Socket,
    FileType::CharDevice,
    FileType::BlockDevice,
];

/// Most distinct strings one entry interns (more are written out each time).
const INTERNED_MAX: usize = 4096;
/// Longest string interned (longer ones are written out each time).
const INTERN_LEN_MAX: usize = 64;

/// What the write path rarely carries, as JSON.
#[derive(Serialize, Deserialize)]
struct Rest {
    /// Every context but `filesystem`.
    context: Context,
    timeline: Option<Timeline>,
    causality_links: Vec<u64>,
}

/// What `Rest` carries of an event, when it carries anything.
fn rest_of(context: &Context, timeline: Option<&Timeline>, causality_links: &[u64]) -> Option<Rest> {
    let Context { filesystem: _, vector, observability, gap, graph, parameters, fuse, kernel, kernel_calls } =
        context;
    (vector.is_some()
        || observability.is_some()
        || gap.is_some()
        || graph.is_some()
        || !parameters.is_empty()
        || !fuse.is_empty()
        || kernel.is_some()
        || !kernel_calls.is_empty()
        || timeline.is_some()
        || !causality_links.is_empty())
    .then(|| Rest {
        context: Context {
            filesystem: None,
            vector: vector.clone(),
            observability: observability.clone(),
            gap: gap.clone(),
            graph: graph.clone(),
            parameters: parameters.clone(),
            fuse: fuse.clone(),
            kernel: kernel.clone(),
            kernel_calls: kernel_calls.clone(),
        },
        timeline: timeline.copied(),
        causality_links: causality_links.to_vec(),
    })
}

/// The values the next event is encoded against.
#[derive(Default)]
struct Previous {
    event_id: u64,
    wall_ns: u64,
    monotonic_ns: u64,
    sequence: u64,
    origin_sequence: u64,
    hlc: u64,
    path: Vec<u8>,
}

/// Encodes the events of one entry.
#[derive(Default)]
pub struct Encoder {
    out: Vec<u8>,
    strings: HashMap<Vec<u8>, u64>,
    previous: Previous,
    run: Option<Run>,
    /// Events encoded.
    pub count: u32,
}

/// The mask of the bits whose condition holds.
fn bits(conditions: &[(bool, u32)]) -> u32 {
    conditions.iter().filter(|(on, _)| *on).fold(0, |mask, (_, bit)| mask | bit)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)).cast_unsigned()
}

fn unzigzag(value: u64) -> i64 {
    (value >> 1).cast_signed() ^ -(value & 1).cast_signed()
}

/// `value - previous` as a signed difference (wrapping: any two values round-trip).
fn delta(value: u64, previous: u64) -> u64 {
    zigzag(value.wrapping_sub(previous).cast_signed())
}

impl Encoder {
    /// Bytes encoded so far.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        self.out.len()
    }

    /// The encoded entry.
    #[must_use]
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.out.push(value.to_le_bytes()[0] | 0x80);
            value >>= 7;
        }
        self.out.push(value.to_le_bytes()[0]);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.out.extend_from_slice(bytes);
    }

    fn interned(&mut self, bytes: &[u8]) {
        if let Some(&place) = self.strings.get(bytes) {
            self.varint(place + 1);
            return;
        }
        self.varint(0);
        self.bytes(bytes);
        if bytes.len() <= INTERN_LEN_MAX && self.strings.len() < INTERNED_MAX {
            let place = self.strings.len() as u64;
            self.strings.insert(bytes.to_vec(), place);
        }
    }

    fn optional_interned(&mut self, text: Option<&str>) {
        match text {
            None => self.out.push(0),
            Some(text) => {
                self.out.push(1);
                self.interned(text.as_bytes());
            }
        }
    }

    fn path(&mut self, path: &[u8]) {
        let shared = path.iter().zip(&self.previous.path).take_while(|(a, b)| a == b).count();
        self.varint(shared as u64);
        self.bytes(&path[shared..]);
        self.previous.path.clear();
        self.previous.path.extend_from_slice(path);
    }

    /// Appends `event`.
    ///
    /// # Errors
    /// Only when its rare fields cannot be written as JSON (they always can).
    pub fn push(&mut self, event: &SemanticEvent) -> Result<(), serde_json::Error> {
        let SemanticEvent {
            event_id,
            origin,
            event_type,
            event_type_code,
            event_subtype,
            timestamp,
            global_sequence,
            local_sequence,
            flags,
            priority,
            event_size,
            event_version,
            parent_event_id,
            causality_links,
            context,
            process,
            result,
            duration_ns,
            timeline,
        } = event;
        let filesystem = &context.filesystem;
        let rest = rest_of(context, timeline.as_ref(), causality_links);
        let rest = rest.as_ref().map(serde_json::to_vec).transpose()?;
        let new_run = self.run.as_ref() != Some(&origin.run);
        let mask = bits(&[
            (parent_event_id.is_some(), PARENT),
            (process.is_some(), PROCESS),
            (result.is_some(), RESULT),
            (filesystem.is_some(), FILESYSTEM),
            (rest.is_some(), REST),
            (new_run, NEW_RUN),
            (*event_type_code != event_type.code(), OTHER_CODE),
            (timestamp.hlc.is_some(), HLC),
        ]);
        self.varint(u64::from(mask));
        self.varint(delta(*event_id, self.previous.event_id));
        self.previous.event_id = *event_id;
        let Origin { run, cpu, sequence, part } = origin;
        if new_run {
            self.interned(run.node().as_str().as_bytes());
            self.out.extend_from_slice(&run.id().to_le_bytes());
            self.run = Some(run.clone());
        }
        self.varint(u64::from(*cpu));
        self.varint(delta(*sequence, self.previous.origin_sequence));
        self.previous.origin_sequence = *sequence;
        self.varint(u64::from(*part));
        self.varint(u64::from(event_type.code()));
        if mask & OTHER_CODE != 0 {
            self.varint(u64::from(*event_type_code));
        }
        self.interned(event_subtype.as_bytes());
        let Timestamp { wall_ns, monotonic_ns, cpu, pid, sequence, hlc } = timestamp;
        if let Some(hlc) = hlc {
            self.varint(delta(*hlc, self.previous.hlc));
            self.previous.hlc = *hlc;
        }
        self.varint(delta(*wall_ns, self.previous.wall_ns));
        self.varint(delta(*monotonic_ns, self.previous.monotonic_ns));
        self.varint(u64::from(*cpu));
        self.varint(u64::from(*pid));
        self.varint(delta(*sequence, self.previous.sequence));
        (self.previous.wall_ns, self.previous.monotonic_ns, self.previous.sequence) =
            (*wall_ns, *monotonic_ns, *sequence);
        self.varint(*global_sequence);
        self.varint(delta(*local_sequence, *sequence));
        self.varint(u64::from(*flags));
        self.out.push(*priority as u8);
        self.varint(u64::from(*event_size));
        self.varint(u64::from(*event_version));
        if let Some(parent) = parent_event_id {
            self.varint(delta(*parent, *event_id));
        }
        if let Some(ProcessInfo { pid, tid, uid, gid, comm, cgroup_id }) = process {
            self.varint(u64::from(*pid));
            self.varint(zigzag(i64::from(*tid) - i64::from(*pid)));
            self.varint(u64::from(*uid));
            self.varint(u64::from(*gid));
            self.interned(comm.as_bytes());
            self.varint(*cgroup_id);
        }
        if let Some(OpResult { ok, ret, error }) = result {
            self.out.push(u8::from(*ok));
            self.varint(zigzag(*ret));
            self.optional_interned(error.as_deref());
        }
        self.varint(*duration_ns);
        if let Some(filesystem) = filesystem {
            self.filesystem(filesystem);
        }
        if let Some(rest) = rest {
            self.bytes(&rest);
        }
        self.count += 1;
        Ok(())
    }

    fn filesystem(&mut self, filesystem: &FilesystemContext) {
        let FilesystemContext {
            path,
            path_truncated,
            inode_number,
            file_type,
            target_path,
            xattr_name,
            fd,
            bytes,
            offset,
            mode,
            uid,
            gid,
            size,
        } = filesystem;
        let mask = bits(&[
            (path.is_some(), FS_PATH),
            (*path_truncated, FS_TRUNCATED),
            (inode_number.is_some(), FS_INODE),
            (file_type.is_some(), FS_TYPE),
            (target_path.is_some(), FS_TARGET),
            (xattr_name.is_some(), FS_XATTR),
            (fd.is_some(), FS_FD),
            (bytes.is_some(), FS_BYTES),
            (offset.is_some(), FS_OFFSET),
            (mode.is_some(), FS_MODE),
            (uid.is_some(), FS_UID),
            (gid.is_some(), FS_GID),
            (size.is_some(), FS_SIZE),
        ]);
        self.varint(u64::from(mask));
        if let Some(path) = path {
            self.path(path.as_bytes());
        }
        if let Some(inode) = inode_number {
            self.varint(*inode);
        }
        if let Some(file_type) = file_type {
            let place = FILE_TYPES.iter().position(|t| t == file_type).unwrap_or_default();
            self.out.push(u8::try_from(place).unwrap_or_default());
        }
        if let Some(target) = target_path {
            self.bytes(target.as_bytes());
        }
        if let Some(xattr) = xattr_name {
            self.bytes(xattr.as_bytes());
        }
        if let Some(fd) = fd {
            self.varint(zigzag(i64::from(*fd)));
        }
        for value in [bytes, offset].into_iter().flatten() {
            self.varint(*value);
        }
        if let Some(mode) = mode {
            self.interned(mode.as_bytes());
        }
        for value in [uid, gid].into_iter().flatten() {
            self.varint(u64::from(*value));
        }
        if let Some(size) = size {
            self.varint(*size);
        }
    }
}

/// Reads back the events of one entry.
pub struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
    strings: Vec<&'a [u8]>,
    previous: Previous,
    run: Option<Run>,
}

fn invalid(what: &'static str) -> CodecError {
    CodecError::Invalid { what }
}

impl<'a> Decoder<'a> {
    #[must_use]
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0, strings: Vec::new(), previous: Previous::default(), run: None }
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        let byte = *self.bytes.get(self.at).ok_or(CodecError::Truncated)?;
        self.at += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid("varint"))
    }

    fn small<T: TryFrom<u64>>(&mut self, what: &'static str) -> Result<T, CodecError> {
        T::try_from(self.varint()?).map_err(|_| invalid(what))
    }

    fn undelta(&mut self, previous: u64) -> Result<u64, CodecError> {
        Ok(previous.wrapping_add(unzigzag(self.varint()?).cast_unsigned()))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(len).ok_or(CodecError::Truncated)?;
        let bytes = self.bytes.get(self.at..end).ok_or(CodecError::Truncated)?;
        self.at = end;
        Ok(bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.small("length")?;
        self.take(len)
    }

    fn interned(&mut self) -> Result<&'a [u8], CodecError> {
        match self.varint()? {
            0 => {
                let bytes = self.bytes()?;
                if bytes.len() <= INTERN_LEN_MAX && self.strings.len() < INTERNED_MAX {
                    self.strings.push(bytes);
                }
                Ok(bytes)
            }
            place => {
                let place = usize::try_from(place - 1).map_err(|_| invalid("string reference"))?;
                self.strings.get(place).copied().ok_or_else(|| invalid("string reference"))
            }
        }
    }

    fn text(&mut self, what: &'static str) -> Result<String, CodecError> {
        let bytes = self.interned()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid(what))
    }

    fn path(&mut self) -> Result<PathBytes, CodecError> {
        let shared = self.small("path")?;
        let suffix = self.bytes()?;
        let mut path = self.previous.path.get(..shared).ok_or_else(|| invalid("path"))?.to_vec();
        path.extend_from_slice(suffix);
        self.previous.path.clone_from(&path);
        Ok(PathBytes(path))
    }

    /// The next event, `None` at the end of the entry.
    ///
    /// # Errors
    /// Bytes that are not an encoding of events (the rest of the entry cannot be read either).
    pub fn next_event(&mut self) -> Result<Option<SemanticEvent>, CodecError> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let mask: u32 = self.small("mask")?;
        let event_id = self.undelta(self.previous.event_id)?;
        self.previous.event_id = event_id;
        if mask & NEW_RUN != 0 {
            let node = std::str::from_utf8(self.interned()?).map_err(|_| invalid("node"))?;
            let node = NodeId::new(node).map_err(|_| invalid("node"))?;
            let id = u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| CodecError::Truncated)?);
            self.run = Some(Run::with_id(node, id));
        }
        let run = self.run.clone().ok_or_else(|| invalid("origin"))?;
        let cpu = self.small("cpu")?;
        let sequence = self.undelta(self.previous.origin_sequence)?;
        self.previous.origin_sequence = sequence;
        let origin = Origin { run, cpu, sequence, part: self.small("part")? };
        let event_type =
            EventType::from_code(self.small("event type")?).ok_or_else(|| invalid("event type"))?;
        let event_type_code =
            if mask & OTHER_CODE == 0 { event_type.code() } else { self.small("event type code")? };
        let event_subtype = self.text("subtype")?;
        let hlc = if mask & HLC == 0 { None } else { Some(self.undelta(self.previous.hlc)?) };
        if let Some(hlc) = hlc {
            self.previous.hlc = hlc;
        }
        let wall_ns = self.undelta(self.previous.wall_ns)?;
        let monotonic_ns = self.undelta(self.previous.monotonic_ns)?;
        let (cpu, pid) = (self.small("cpu")?, self.small("pid")?);
        let sequence = self.undelta(self.previous.sequence)?;
        (self.previous.wall_ns, self.previous.monotonic_ns, self.previous.sequence) =
            (wall_ns, monotonic_ns, sequence);
        let timestamp = Timestamp { wall_ns, monotonic_ns, cpu, pid, sequence, hlc };
        let global_sequence = self.varint()?;
        let local_sequence = self.undelta(sequence)?;
        let flags = self.small("flags")?;
        let priority = match self.byte()? {
            1 => Priority::Critical,
            2 => Priority::High,
            3 => Priority::Normal,
            4 => Priority::Low,
            5 => Priority::Background,
            _ => return Err(invalid("priority")),
        };
        let (event_size, event_version) = (self.small("size")?, self.small("version")?);
        let parent_event_id = if mask & PARENT == 0 { None } else { Some(self.undelta(event_id)?) };
        let process = if mask & PROCESS == 0 {
            None
        } else {
            let pid: u32 = self.small("pid")?;
            let tid = u32::try_from(i64::from(pid) + unzigzag(self.varint()?)).map_err(|_| invalid("tid"))?;
            let (uid, gid) = (self.small("uid")?, self.small("gid")?);
            let comm = PathBytes(self.interned()?.to_vec());
            Some(ProcessInfo { pid, tid, uid, gid, comm, cgroup_id: self.varint()? })
        };
        let result = if mask & RESULT == 0 {
            None
        } else {
            let ok = self.byte()? != 0;
            let ret = unzigzag(self.varint()?);
            let error = if self.byte()? == 0 { None } else { Some(self.text("errno name")?) };
            Some(OpResult { ok, ret, error })
        };
        let duration_ns = self.varint()?;
        let filesystem = if mask & FILESYSTEM == 0 { None } else { Some(self.filesystem()?) };
        let Rest { context, timeline, causality_links } = if mask & REST == 0 {
            Rest { context: Context::default(), timeline: None, causality_links: Vec::new() }
        } else {
            serde_json::from_slice(self.bytes()?).map_err(|source| CodecError::Rest { source })?
        };
        Ok(Some(SemanticEvent {
            event_id,
            origin,
            event_type,
            event_type_code,
            event_subtype,
            timestamp,
            global_sequence,
            local_sequence,
            flags,
            priority,
            event_size,
            event_version,
            parent_event_id,
            causality_links,
            context: Context { filesystem, ..context },
            process,
            result,
            duration_ns,
            timeline,
        }))
    }

    fn filesystem(&mut self) -> Result<FilesystemContext, CodecError> {
        let mask: u32 = self.small("filesystem mask")?;
        let has = |bit: u32| mask & bit != 0;
        let path = if has(FS_PATH) { Some(self.path()?) } else { None };
        let inode_number = if has(FS_INODE) { Some(self.varint()?) } else { None };
        let file_type = if has(FS_TYPE) {
            Some(*FILE_TYPES.get(usize::from(self.byte()?)).ok_or_else(|| invalid("file type"))?)
        } else {
            None
        };
        let target_path = if has(FS_TARGET) { Some(PathBytes(self.bytes()?.to_vec())) } else { None };
        let xattr_name = if has(FS_XATTR) { Some(PathBytes(self.bytes()?.to_vec())) } else { None };
        let fd = if has(FS_FD) {
            Some(i32::try_from(unzigzag(self.varint()?)).map_err(|_| invalid("fd"))?)
        } else {
            None
        };
        let bytes = if has(FS_BYTES) { Some(self.varint()?) } else { None };
        let offset = if has(FS_OFFSET) { Some(self.varint()?) } else { None };
        let mode = if has(FS_MODE) { Some(self.text("mode")?) } else { None };
        let uid = if has(FS_UID) { Some(self.small("uid")?) } else { None };
        let gid = if has(FS_GID) { Some(self.small("gid")?) } else { None };
        let size = if has(FS_SIZE) { Some(self.varint()?) } else { None };
        Ok(FilesystemContext {
            path,
            path_truncated: has(FS_TRUNCATED),
            inode_number,
            file_type,
            target_path,
            xattr_name,
            fd,
            bytes,
            offset,
            mode,
            uid,
            gid,
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FuseRequest, GraphContext, KernelContext};

    fn round_trip(events: &[SemanticEvent]) -> (Vec<SemanticEvent>, usize) {
        let mut encoder = Encoder::default();
        for event in events {
            encoder.push(event).unwrap();
        }
        assert_eq!(encoder.count as usize, events.len());
        let bytes = encoder.finish();
        let mut decoder = Decoder::new(&bytes);
        let mut back = Vec::new();
        while let Some(event) = decoder.next_event().unwrap() {
            back.push(event);
        }
        (back, bytes.len())
    }

    fn json(event: &SemanticEvent) -> String {
        serde_json::to_string(event).unwrap()
    }

    #[test]
    fn every_field_reads_back_as_written() {
        let mut plain =
            SemanticEvent::sample(EventType::FilesystemWrite, "/srv/a/file-1", 40, "writer", true);
        plain.origin.sequence = 1_000;
        plain.timestamp = Timestamp {
            wall_ns: 1_700_000_000_000_000_000,
            monotonic_ns: 55,
            cpu: 3,
            pid: 40,
            sequence: 9,
            hlc: None,
        };
        plain.local_sequence = 9;
        let mut full = SemanticEvent::sample(EventType::FilesystemRename, "/srv/a/file-2", 41, "mv", false);
        let fs = full.context.filesystem.as_mut().unwrap();
        *fs = FilesystemContext {
            path: Some(PathBytes(b"/srv/a/fil\xffe\n".to_vec())),
            path_truncated: true,
            inode_number: Some(u64::MAX),
            file_type: Some(FileType::BlockDevice),
            target_path: Some(PathBytes::from("/srv/b")),
            xattr_name: Some(PathBytes::from("user.x")),
            fd: Some(-1),
            bytes: Some(0),
            offset: Some(7),
            mode: Some("0644".into()),
            uid: Some(u32::MAX),
            gid: Some(0),
            size: Some(12),
        };
        full.event_type_code = 0x0999;
        full.parent_event_id = Some(2);
        full.causality_links = vec![2, 3];
        full.priority = Priority::Background;
        full.flags = u32::MAX;
        full.origin.part = 7;
        full.origin.cpu = crate::event::OWN_CPU;
        full.timestamp.wall_ns = 0;
        full.timestamp.hlc = Some(u64::MAX);
        full.local_sequence = u64::MAX;
        full.global_sequence = 77;
        full.timeline = Some(Timeline { daemon_ns: Some(5), ..Timeline::default() });
        full.context.fuse.push(FuseRequest { opcode_name: "RENAME".into(), ..FuseRequest::default() });
        full.context.graph = Some(GraphContext { node: PathBytes::from("/g"), ..GraphContext::default() });
        full.context.kernel = Some(KernelContext {
            hook: "kprobe".into(),
            fields: [("n".to_owned(), serde_json::json!({"dev": "8:1", "ino": 3}))].into(),
            ..KernelContext::default()
        });
        full.context.parameters.insert("k".into(), "v".into());
        full.context.kernel_calls.push(crate::event::KernelCall {
            hook: "fentry".into(),
            name: "vfs_rename".into(),
            event_type: EventType::FilesystemRename,
            enter_ns: 10,
            exit_ns: 20,
            ret: Some(0),
        });
        full.process.as_mut().unwrap().tid = 3;
        full.process.as_mut().unwrap().cgroup_id = 8_589_934_593;
        let other_run = crate::event::Run::new(NodeId::new("elsewhere").unwrap());
        let mut elsewhere = plain.clone();
        elsewhere.origin = other_run.origin(1, 5);
        elsewhere.timestamp.hlc = Some(1_700_000_000_000 << 16);
        let bare = SemanticEvent::own(&other_run, EventType::SystemSync, "sync".into(), 1, 2);
        let events = vec![plain.clone(), full, plain.clone(), elsewhere, bare, plain];
        let (back, _) = round_trip(&events);
        assert_eq!(back.iter().map(json).collect::<Vec<_>>(), events.iter().map(json).collect::<Vec<_>>());
        assert!(back.iter().zip(&events).all(|(a, b)| a.origin == b.origin), "origins name their runs");
    }

    #[test]
    fn a_write_event_takes_a_tenth_of_its_json_and_damage_is_refused() {
        let run = Run::new(NodeId::new("n1").unwrap());
        let events: Vec<SemanticEvent> = (0..100u64)
            .map(|k| {
                let mut event = SemanticEvent::sample(
                    EventType::FilesystemWrite,
                    &format!("/srv/data/object-{k:06}"),
                    4242,
                    "writer",
                    true,
                );
                event.origin = run.origin(0, k);
                event.timestamp.sequence = k;
                event.timestamp.wall_ns = 1_700_000_000_000_000_000 + k * 3_000;
                event.timestamp.monotonic_ns = 9_000_000_000 + k * 3_000;
                event.context.filesystem.as_mut().unwrap().bytes = Some(4096);
                event
            })
            .collect();
        let (back, len) = round_trip(&events);
        assert_eq!(back.len(), 100);
        let json_len: usize = events.iter().map(|e| json(e).len() + 1).sum();
        assert!(len * 10 < json_len, "{len} bytes binary, {json_len} as JSON lines");
        let mut bytes = Encoder::default();
        bytes.push(&events[0]).unwrap();
        let bytes = bytes.finish();
        for cut in 0..bytes.len() {
            assert!(Decoder::new(&bytes[..cut]).next_event().is_err() || cut == 0, "cut at {cut}");
        }
        assert!(Decoder::new(&[0x00, 0x00, 0x00]).next_event().is_err(), "an event without a run");
    }
}
