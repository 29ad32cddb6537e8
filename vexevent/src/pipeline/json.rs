//! The JSON line of a [`SemanticEvent`], formatted straight into a byte buffer: the same bytes
//! `serde_json::to_writer` writes (the serde impls stay for reading events back and for the rare
//! parts written through them), without serde's generic path for the fields every event has.
//! Each hand-written struct is destructured whole, so a field added to it fails to compile here
//! until it is written.

use serde::Serialize;

use crate::event::{
    Context, FileType, FilesystemContext, OpResult, Origin, PathBytes, ProcessInfo, SemanticEvent, Timestamp,
};

/// Appends `event` as one JSON object (no newline) to `out`.
///
/// # Errors
/// What serde reports for the parts written through it (a float, a nested context); none can
/// fail today.
pub fn write_event(event: &SemanticEvent, out: &mut Vec<u8>) -> serde_json::Result<()> {
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
    let mut object = Object::new(out);
    object.key("event_id").uint(*event_id);
    write_origin(object.key("origin").0, origin);
    object.key("event_type").raw_str(event_type.name());
    object.key("event_type_code").uint(*event_type_code);
    object.key("event_subtype").str(event_subtype);
    write_timestamp(object.key("timestamp").0, timestamp);
    object.key("global_sequence").uint(*global_sequence);
    object.key("local_sequence").uint(*local_sequence);
    object.key("flags").uint(*flags);
    object.key("priority").uint(*priority as u8);
    object.key("event_size").uint(*event_size);
    object.key("event_version").uint(*event_version);
    if let Some(parent) = parent_event_id {
        object.key("parent_event_id").uint(*parent);
    }
    if !causality_links.is_empty() {
        object.key("causality_links").serde(causality_links)?;
    }
    write_context(object.key("context").0, context)?;
    if let Some(process) = process {
        write_process(object.key("process").0, process)?;
    }
    if let Some(result) = result {
        write_result(object.key("result").0, result);
    }
    object.key("duration_ns").uint(*duration_ns);
    if let Some(timeline) = timeline {
        object.key("timeline").serde(timeline)?;
    }
    object.end();
    Ok(())
}

/// As `Origin`'s serde impl writes it: `{"node","run","part","id"}`, the id
/// `node:run:cpu:sequence:part`.
fn write_origin(out: &mut Vec<u8>, origin: &Origin) {
    let (node, run, prefix) = origin.texts();
    let mut object = Object::new(out);
    object.key("node").raw_str(node);
    object.key("run").raw_str(run);
    object.key("part").uint(origin.part);
    let id = object.key("id").0;
    id.push(b'"');
    id.extend_from_slice(prefix.as_bytes());
    id.push(b':');
    decimal(id, u64::from(origin.cpu));
    id.push(b':');
    decimal(id, origin.sequence);
    id.push(b':');
    decimal(id, u64::from(origin.part));
    id.push(b'"');
    object.end();
}

fn write_timestamp(out: &mut Vec<u8>, timestamp: &Timestamp) {
    let Timestamp { wall_ns, monotonic_ns, cpu, pid, sequence } = timestamp;
    let mut object = Object::new(out);
    object.key("wall_ns").uint(*wall_ns);
    object.key("monotonic_ns").uint(*monotonic_ns);
    object.key("cpu").uint(*cpu);
    object.key("pid").uint(*pid);
    object.key("sequence").uint(*sequence);
    object.end();
}

fn write_context(out: &mut Vec<u8>, context: &Context) -> serde_json::Result<()> {
    let Context { filesystem, vector, observability, gap, graph, parameters, fuse, kernel } = context;
    let mut object = Object::new(out);
    if let Some(filesystem) = filesystem {
        write_filesystem(object.key("filesystem").0, filesystem)?;
    }
    if let Some(vector) = vector {
        object.key("vector").serde(vector)?;
    }
    if let Some(observability) = observability {
        object.key("observability").serde(observability)?;
    }
    if let Some(gap) = gap {
        object.key("gap").serde(gap)?;
    }
    if let Some(graph) = graph {
        object.key("graph").serde(graph)?;
    }
    if !parameters.is_empty() {
        object.key("parameters").serde(parameters)?;
    }
    if !fuse.is_empty() {
        object.key("fuse").serde(fuse)?;
    }
    if let Some(kernel) = kernel {
        object.key("kernel").serde(kernel)?;
    }
    object.end();
    Ok(())
}

fn write_filesystem(out: &mut Vec<u8>, fs: &FilesystemContext) -> serde_json::Result<()> {
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
    } = fs;
    let mut object = Object::new(out);
    match path {
        Some(path) => object.key("path").path(path)?,
        None => object.key("path").0.extend_from_slice(b"null"),
    }
    if *path_truncated {
        object.key("path_truncated").0.extend_from_slice(b"true");
    }
    if let Some(inode) = inode_number {
        object.key("inode_number").uint(*inode);
    }
    if let Some(file_type) = file_type {
        object.key("file_type").raw_str(file_type_name(*file_type));
    }
    if let Some(target) = target_path {
        object.key("target_path").path(target)?;
    }
    if let Some(name) = xattr_name {
        object.key("xattr_name").path(name)?;
    }
    if let Some(fd) = fd {
        object.key("fd").int(i64::from(*fd));
    }
    if let Some(bytes) = bytes {
        object.key("bytes").uint(*bytes);
    }
    if let Some(offset) = offset {
        object.key("offset").uint(*offset);
    }
    if let Some(mode) = mode {
        object.key("mode").str(mode);
    }
    if let Some(uid) = uid {
        object.key("uid").uint(*uid);
    }
    if let Some(gid) = gid {
        object.key("gid").uint(*gid);
    }
    if let Some(size) = size {
        object.key("size").uint(*size);
    }
    object.end();
    Ok(())
}

/// [`FileType`]'s serialized name (`rename_all = "snake_case"`).
const fn file_type_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::Regular => "regular",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharDevice => "char_device",
        FileType::BlockDevice => "block_device",
    }
}

fn write_process(out: &mut Vec<u8>, process: &ProcessInfo) -> serde_json::Result<()> {
    let ProcessInfo { pid, tid, uid, gid, comm } = process;
    let mut object = Object::new(out);
    object.key("pid").uint(*pid);
    object.key("tid").uint(*tid);
    object.key("uid").uint(*uid);
    object.key("gid").uint(*gid);
    object.key("comm").path(comm)?;
    object.end();
    Ok(())
}

fn write_result(out: &mut Vec<u8>, result: &OpResult) {
    let OpResult { ok, ret, error } = result;
    let mut object = Object::new(out);
    object.key("ok").0.extend_from_slice(if *ok { b"true" } else { b"false" });
    object.key("ret").int(*ret);
    if let Some(error) = error {
        object.key("error").str(error);
    }
    object.end();
}

/// A JSON object being written: `{`, then keys separated by commas.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

/// The place of one value, right after its key.
struct Value<'a>(&'a mut Vec<u8>);

impl<'a> Object<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    /// Writes `"name":` (names are plain ASCII identifiers: nothing to escape).
    #[inline]
    fn key(&mut self, name: &str) -> Value<'_> {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        Value(self.out)
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

impl Value<'_> {
    fn uint(self, n: impl Into<u64>) {
        decimal(self.0, n.into());
    }

    fn int(self, n: i64) {
        if n < 0 {
            self.0.push(b'-');
        }
        decimal(self.0, n.unsigned_abs());
    }

    /// A string known to need no escaping (variant names, node ids, hex).
    fn raw_str(self, text: &str) {
        self.0.push(b'"');
        self.0.extend_from_slice(text.as_bytes());
        self.0.push(b'"');
    }

    fn str(self, text: &str) {
        escaped(self.0, text.as_bytes());
    }

    /// A path: a JSON string when it is UTF-8, else serde's object (base64 and lossy text).
    fn path(self, path: &PathBytes) -> serde_json::Result<()> {
        if std::str::from_utf8(path.as_bytes()).is_ok() {
            escaped(self.0, path.as_bytes());
            Ok(())
        } else {
            self.serde(path)
        }
    }

    /// A value written through its serde impl (the same serializer `serde_json::to_writer` uses).
    fn serde(self, value: &impl Serialize) -> serde_json::Result<()> {
        serde_json::to_writer(&mut *self.0, value)
    }
}

/// "00" to "99": two digits per division when formatting numbers.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends `n` in decimal, two digits at a time from the end, straight into the buffer's spare
/// room (no copy of a formatted number: a call to `memcpy` per number was the writer's largest
/// cost; a division per digit the next).
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let len = n.checked_ilog10().map_or(1, |digits| digits as usize + 1);
    out.reserve(len);
    let start = out.len();
    let digits = &mut out.spare_capacity_mut()[..len];
    let mut end = len;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        digits[end - 2].write(DIGIT_PAIRS[pair]);
        digits[end - 1].write(DIGIT_PAIRS[pair + 1]);
        end -= 2;
    }
    if n >= 10 {
        let pair = (n % 100) as usize * 2;
        digits[end - 2].write(DIGIT_PAIRS[pair]);
        digits[end - 1].write(DIGIT_PAIRS[pair + 1]);
    } else {
        digits[end - 1].write(b'0' + (n % 10) as u8);
    }
    // SAFETY: the `len` bytes after the old length were reserved and have just been written
    // (`len` is the number of decimal digits of `n`: every position from the end down to 0).
    unsafe { out.set_len(start + len) };
}

/// Appends `text` (valid UTF-8) as a JSON string, escaped as `serde_json` escapes: `"` and `\`,
/// the short forms `\b \t \n \f \r`, other control characters as `\u00XX`; everything else as is.
fn escaped(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut start = 0;
    for (index, &byte) in text.iter().enumerate() {
        if byte >= 0x20 && byte != b'"' && byte != b'\\' {
            continue;
        }
        out.extend_from_slice(&text[start..index]);
        start = index + 1;
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\x08' => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\x0c' => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
        }
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::event::{
        EventType, FuseRequest, GapContext, GraphContext, GraphEdge, ObservabilityContext, Priority,
        Timeline, VectorContext,
    };

    fn line(event: &SemanticEvent) -> String {
        let mut out = Vec::new();
        write_event(event, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn same_as_serde(event: &SemanticEvent) {
        assert_eq!(line(event), serde_json::to_string(event).unwrap());
    }

    #[test]
    fn a_plain_event_is_written_as_serde_writes_it() {
        same_as_serde(&SemanticEvent::sample(EventType::FilesystemRead, "/w/a", 7, "cat", true));
        same_as_serde(&SemanticEvent::sample(EventType::FilesystemCreate, "/w/b", 1, "sh", false));
    }

    #[test]
    fn every_field_and_context_is_written_as_serde_writes_it() {
        let mut event =
            SemanticEvent::sample(EventType::FilesystemRename, "/w/a\"\\\u{7}\u{1f}é\u{7f}", 7, "mv", false);
        event.parent_event_id = Some(3);
        event.causality_links = vec![3, 4];
        event.priority = Priority::Critical;
        event.timeline = Some(Timeline { fuse_ns: 5, daemon_ns: Some(2), ..Timeline::default() });
        event.result.as_mut().unwrap().ret = i64::MIN;
        let fs = event.context.filesystem.as_mut().unwrap();
        fs.path_truncated = true;
        fs.inode_number = Some(u64::MAX);
        fs.file_type = Some(FileType::CharDevice);
        fs.target_path = Some(PathBytes(b"/w/b\xff\n".to_vec()));
        fs.xattr_name = Some(PathBytes::from("user.x\t\r\x08\x0c"));
        fs.fd = Some(-100);
        (fs.bytes, fs.offset, fs.size) = (Some(1), Some(0), Some(9));
        (fs.mode, fs.uid, fs.gid) = (Some("644".into()), Some(0), Some(u32::MAX));
        event.context.vector =
            Some(VectorContext { max_distance: Some(0.1), k: Some(3), ..VectorContext::default() });
        event.context.observability = Some(ObservabilityContext {
            metric_name: "m".into(),
            metric_value: Some(2.0),
            metric_unit: None,
            service_name: "s".into(),
            operation_name: "o".into(),
        });
        event.context.gap = Some(GapContext {
            lost_by_operation: BTreeMap::from([("open".into(), 2)]),
            ..GapContext::default()
        });
        event.context.graph = Some(GraphContext {
            node: PathBytes::from("/w"),
            node_id: Some(1),
            edge: Some(GraphEdge { from: "/".into(), to: "/w".into(), kind: "Contains".into() }),
            operation_type: "create".into(),
        });
        event.context.parameters.insert("k".into(), "v\n".into());
        event.context.fuse.push(FuseRequest { opcode_name: "RENAME".into(), ..FuseRequest::default() });
        event.process.as_mut().unwrap().comm = PathBytes(b"\xfe".to_vec());
        same_as_serde(&event);
        for file_type in [
            FileType::Regular,
            FileType::Directory,
            FileType::Symlink,
            FileType::Fifo,
            FileType::Socket,
            FileType::BlockDevice,
        ] {
            event.context.filesystem.as_mut().unwrap().file_type = Some(file_type);
            same_as_serde(&event);
        }
    }

    #[test]
    fn absent_parts_are_left_out_or_null_as_serde_does() {
        let mut event = SemanticEvent::sample(EventType::ObservabilityAlertTriggered, "/", 0, "", true);
        event.context.filesystem.as_mut().unwrap().path = None;
        event.process = None;
        event.result = None;
        same_as_serde(&event);
        event.context = Context::default();
        same_as_serde(&event);
    }

    #[test]
    fn numbers_are_written_as_serde_writes_them() {
        let around_powers_of_ten = (0..20).flat_map(|k| {
            let power = 10u64.pow(k);
            [power - 1, power, power + 1, power.saturating_mul(5)]
        });
        for n in around_powers_of_ten.chain([12_345, 1_234_567, u64::from(u32::MAX), u64::MAX / 10, u64::MAX])
        {
            let mut out = Vec::new();
            decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for n in [0, -1, 7, -100, i64::MIN, i64::MAX] {
            let mut out = b"x".to_vec();
            Value(&mut out).int(n);
            assert_eq!(out, format!("x{n}").as_bytes());
        }
    }

    #[test]
    fn every_byte_is_escaped_as_serde_escapes_it() {
        let text: String = (0u8..=0x7f).map(char::from).chain(['é', '\u{2028}', '😀']).collect();
        let mut out = Vec::new();
        escaped(&mut out, text.as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&text).unwrap());
    }
}
