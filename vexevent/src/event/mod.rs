//! The domain model every stage meets at: [`SemanticEvent`], a `VexFS` semantic event with its
//! contexts, the process that caused it and the operation's result.

mod operations;
mod origin;
mod path;
mod scope;
mod types;

pub use operations::{USER_OPS, event_types_of, ops_yielding};
pub use origin::{
    COMPANION_PART, FALLBACK_NODE_ID, GRAPH_PART, NODE_ID_MAX, NodeConfig, NodeId, OWN_CPU, Origin,
    OriginError, Run,
};
pub use path::PathBytes;
pub use scope::{WatchScope, is_under};
pub use types::{EventType, Priority, flags};

use serde::{Deserialize, Serialize};

/// Version of the JSON shape of [`SemanticEvent`].
pub const EVENT_VERSION: u16 = 1;

static NEXT_EVENT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new event id: unique within this process, increasing.
#[must_use]
pub fn next_event_id() -> u64 {
    NEXT_EVENT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One `VexFS` semantic event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SemanticEvent {
    /// Unique within one vexevent run, increasing.
    pub event_id: u64,
    /// The node, run and kernel record it comes from: its id is unique across nodes and runs.
    pub origin: Origin,
    pub event_type: EventType,
    /// `event_type`'s `VexFS` code.
    pub event_type_code: u16,
    /// What produced it: the syscall name (`openat`, `unlinkat`, ...) or the `VexFS` ioctl name.
    pub event_subtype: String,
    pub timestamp: Timestamp,
    /// Position in this instance's output stream, from 0, contiguous (set just before output).
    pub global_sequence: u64,
    /// The kernel record's sequence number within its shard (`timestamp.cpu`).
    pub local_sequence: u64,
    pub flags: u32,
    pub priority: Priority,
    /// Bytes of the kernel record the event was translated from.
    pub event_size: u32,
    pub event_version: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_event_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causality_links: Vec<u64>,
    pub context: Context,
    /// Who performed the operation (absent on events about vexevent itself, such as gaps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    /// How the operation ended (absent on events that are not operations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<OpResult>,
    /// Syscall enter to exit, in nanoseconds.
    pub duration_ns: u64,
    /// Where the time went, for operations seen at several boundaries (FUSE).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
}

impl SemanticEvent {
    /// Whether this is a FUSE request on its own (subtype `FUSE_<OPCODE>`), rather than an
    /// operation seen at a syscall (subtype: the syscall's name).
    #[must_use]
    pub fn is_fuse_request(&self) -> bool {
        self.event_subtype.starts_with("FUSE_")
    }

    /// An event vexevent makes itself, about no single operation (a window, an anomaly, a health
    /// alert, an audit head): of `run`, stamped at kernel time `monotonic_ns` and wall time
    /// `wall_ns`, with default flags and priority and no context; the caller adds what it means.
    #[must_use]
    pub fn own(run: &Run, event_type: EventType, subtype: String, monotonic_ns: u64, wall_ns: u64) -> Self {
        let event_id = next_event_id();
        Self {
            event_id,
            origin: run.own(event_id),
            event_type,
            event_type_code: event_type.code(),
            event_subtype: subtype,
            timestamp: Timestamp { wall_ns, monotonic_ns, cpu: 0, pid: 0, sequence: 0, hlc: None },
            global_sequence: 0,
            local_sequence: 0,
            flags: flags::DEFAULT,
            priority: Priority::Normal,
            event_size: 0,
            event_version: EVENT_VERSION,
            parent_event_id: None,
            causality_links: Vec::new(),
            context: Context::default(),
            process: None,
            result: None,
            duration_ns: 0,
            timeline: None,
        }
    }

    /// An event for unit tests: `event_type` on `path` by process `pid`/`comm`, succeeded or
    /// failed with ENOENT, default flags and priority; tests change what they need.
    #[cfg(test)]
    #[must_use]
    pub fn sample(event_type: EventType, path: &str, pid: u32, comm: &str, ok: bool) -> Self {
        let run = Run::new(NodeId::host());
        let mut event = Self::own(&run, event_type, "openat".into(), 0, 0);
        event.origin = run.origin(0, 0);
        event.timestamp.pid = pid;
        event.context.filesystem =
            Some(FilesystemContext { path: Some(PathBytes::from(path)), ..FilesystemContext::default() });
        event.process =
            Some(ProcessInfo { pid, tid: pid, uid: 0, gid: 0, comm: PathBytes::from(comm), cgroup_id: 0 });
        event.result =
            Some(OpResult { ok, ret: if ok { 0 } else { -2 }, error: (!ok).then(|| "ENOENT".into()) });
        event
    }

    /// A new event of type `event_type` derived from this one: a copy with its own id, linked
    /// to this one as parent and cause. It shares this event's kernel record, so its origin
    /// differs by `part` (see [`Origin::part`]).
    #[must_use]
    pub fn derive(&self, event_type: EventType, part: u16) -> SemanticEvent {
        let mut derived = self.clone();
        derived.event_id = next_event_id();
        derived.origin.part = part;
        derived.event_type = event_type;
        derived.event_type_code = event_type.code();
        derived.parent_event_id = Some(self.event_id);
        derived.causality_links = vec![self.event_id];
        derived
    }

    /// An event vexevent makes itself about this one (a detection, an audit record): derived as
    /// by [`Self::derive`], with an origin of its own in this event's run ([`Run::own`]).
    #[must_use]
    pub fn derive_own(&self, event_type: EventType) -> SemanticEvent {
        let mut derived = self.derive(event_type, 0);
        derived.origin = self.origin.run.own(derived.event_id);
        derived
    }

    /// The `ObservabilityErrorReported` event `VexFS` derives from a failed operation, linked to it.
    #[must_use]
    pub fn error_companion(&self) -> Option<SemanticEvent> {
        let result = self.result.as_ref().filter(|r| !r.ok)?;
        let mut error = self.derive(EventType::ObservabilityErrorReported, COMPANION_PART);
        error.priority = Priority::High;
        #[expect(clippy::cast_precision_loss, reason = "an errno shown as a metric value")]
        let errno = result.ret.unsigned_abs() as f64;
        error.context.observability = Some(ObservabilityContext {
            metric_name: "errno".to_owned(),
            metric_value: Some(errno),
            metric_unit: result.error.clone(),
            service_name: "vexevent".to_owned(),
            operation_name: self.event_subtype.clone(),
        });
        Some(error)
    }
}

/// The boundaries of one operation that crossed into a FUSE daemon, as `CLOCK_MONOTONIC`
/// nanoseconds, and where its time went: `before_fuse_ns + fuse_ns + after_fuse_ns` is the whole
/// operation (syscall enter to exit). The daemon's own boundaries are in `context.fuse`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timeline {
    pub syscall_enter_ns: u64,
    /// The first FUSE request of the operation was queued for the daemon.
    pub request_queued_ns: u64,
    /// The last FUSE request of the operation got the daemon's reply.
    pub request_ended_ns: u64,
    pub syscall_exit_ns: u64,
    /// In the kernel before the first request was queued.
    pub before_fuse_ns: u64,
    /// From the first request queued to the last reply (kernel queue and daemon).
    pub fuse_ns: u64,
    /// From the last reply to the syscall's return.
    pub after_fuse_ns: u64,
    /// Where `fuse_ns` went, summed over the requests, when the daemon side was seen: queued to
    /// read by the daemon, read to reply, reply to the request's end. Together they equal
    /// `fuse_ns` for a single request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_queue_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_ns: Option<u64>,
    /// Part of `daemon_ns` spent in the configured daemon functions (uprobes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_functions_ns: Option<u64>,
}

/// One FUSE request: the kernel queued it for the daemon and the daemon replied.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FuseRequest {
    /// The connection: the FUSE mount's device number (kernel encoding).
    pub connection: u32,
    /// The request's id on its connection.
    pub unique: u64,
    pub opcode: u32,
    /// `LOOKUP`, `CREATE`, ...
    pub opcode_name: String,
    pub requester_pid: u32,
    pub requester_tid: u32,
    /// The daemon thread that replied.
    pub daemon_pid: u32,
    pub daemon_tid: u32,
    pub queued_ns: u64,
    /// When the daemon's read of the request returned (daemon side seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_received_ns: Option<u64>,
    /// When the daemon began writing its reply (daemon side seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_replied_ns: Option<u64>,
    pub ended_ns: u64,
    /// The daemon's error (negative errno), 0 on success.
    pub error: i32,
    /// The node the request is about (daemon side seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodeid: Option<u64>,
    /// The node an entry reply (LOOKUP, CREATE, MKDIR, MKNOD, SYMLINK, LINK) named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_nodeid: Option<u64>,
    /// RENAME's new parent node, LINK's existing node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aux_nodeid: Option<u64>,
    /// The name the request carries (LOOKUP, CREATE, MKDIR, UNLINK, ...; RENAME's old name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<PathBytes>,
    /// RENAME's new name, SYMLINK's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_name: Option<PathBytes>,
    /// Time the daemon spent in the configured functions while serving this request (uprobes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_functions_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_function_calls: Option<u32>,
}

/// When the operation happened.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timestamp {
    /// Wall clock (Unix epoch) at syscall exit, in nanoseconds.
    pub wall_ns: u64,
    /// `CLOCK_MONOTONIC` at syscall exit, in nanoseconds (the kernel's clock).
    pub monotonic_ns: u64,
    /// CPU that produced the record (its shard).
    pub cpu: u32,
    pub pid: u32,
    /// The record's sequence number in its shard.
    pub sequence: u64,
    /// Hybrid logical clock, stamped by the `replicate` stage in `causal` mode (README,
    /// "Cluster"): wall milliseconds in the high 48 bits, a counter in the low 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hlc: Option<u64>,
}

/// The contexts `VexFS` defines; only the ones that apply are present.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Context {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<VectorContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observability: Option<ObservabilityContext>,
    /// On `ObservabilityAlertTriggered` gap events: which records were lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<GapContext>,
    /// `VexFS` graph context, on Graph events derived from file operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph: Option<GraphContext>,
    /// Settings written to `_vexfs/control` (`SystemOptimization`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parameters: std::collections::BTreeMap<String, String>,
    /// The FUSE requests the operation caused, in order (or the one request, on a FUSE event with
    /// no caller syscall).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fuse: Vec<FuseRequest>,
    /// On events of tracepoints and kernel functions attached by name: what the kernel passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelContext>,
    /// Tracepoints and kernel functions that ran inside this event's syscall (same thread,
    /// between its enter and exit), joined by the correlate stage; each is an event of its own
    /// too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_calls: Vec<KernelCall>,
}

/// A tracepoint or kernel function call inside a syscall, as the syscall's event lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KernelCall {
    /// `tracepoint`, `fentry` or `kprobe`.
    pub hook: String,
    /// The tracepoint (`category:name`) or the function.
    pub name: String,
    /// The type of the call's own event.
    pub event_type: EventType,
    /// When it was entered and when it returned (`CLOCK_MONOTONIC`; the same for a tracepoint
    /// or an untimed function).
    pub enter_ns: u64,
    pub exit_ns: u64,
    /// What it returned (a timed function).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<i64>,
}

/// What a tracepoint or kernel function attached by name saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct KernelContext {
    /// `tracepoint`, `fentry` or `kprobe`.
    pub hook: String,
    /// The tracepoint (`category:name`) or the function.
    pub name: String,
    /// The captured fields or arguments by name: numbers, strings, and objects (`{"dev":
    /// "MAJ:MIN", "ino": N, "path": "..."}` for dentries, files, paths and inodes).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, serde_json::Value>,
    /// The traced syscall the call ran in, when it ran in one (same thread, between its enter
    /// and exit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// When that syscall entered (`CLOCK_MONOTONIC`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall_enter_ns: Option<u64>,
    /// Some value could not be read in the kernel, or a path was cut short.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

/// Records the kernel could not deliver (its ring was full): a lower bound for downstream counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GapContext {
    /// CPU whose records were lost.
    pub cpu: u32,
    /// First lost sequence number of that CPU (`local_sequence` of the records around it).
    pub first_sequence: u64,
    /// Number of records lost.
    pub count: u64,
    /// Lost records by operation type (`open`, `write`, ...).
    pub lost_by_operation: std::collections::BTreeMap<String, u64>,
    /// Timestamp of the first lost record (`CLOCK_MONOTONIC`, the clock of
    /// `timestamp.monotonic_ns`): the loss fell within `lost_from_ns ..= lost_to_ns`.
    pub lost_from_ns: u64,
    /// Timestamp of the last lost record.
    pub lost_to_ns: u64,
}

/// What file the operation touched.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FilesystemContext {
    /// Absolute path as the user sees it (see [`PathBytes`] for the encoding).
    pub path: Option<PathBytes>,
    /// The kernel could not capture the whole path (it was longer than the record allows).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inode_number: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_type: Option<FileType>,
    /// Second path: the rename/link destination, the symlink target, the mount source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_path: Option<PathBytes>,
    /// Extended attribute name (setxattr/removexattr).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xattr_name: Option<PathBytes>,
    /// The file descriptor the operation used, for fd-based operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// Bytes read or written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// File offset for positional reads and writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// New mode (chmod, create, mkdir), in octal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// New size (truncate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Type of a file, from its mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// `VexFS`'s vector context (from `VexFS` vector ioctls).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VectorContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element_type: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_type: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_distance: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_results: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_flags: Option<u32>,
    /// Results the kernel reported (only when the ioctl succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results_found: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_time_ns: Option<u64>,
    /// The full ioctl command number (vector ioctls).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ioctl_cmd: Option<String>,
}

/// `VexFS`'s graph context: the file system as a graph of nodes (files, directories) joined by
/// `Contains` edges from each directory to its entries.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GraphContext {
    /// The node: the file's path.
    pub node: PathBytes,
    /// The file's inode number, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// On edge events: the edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<GraphEdge>,
    /// The file operation the graph event derives from (`create`, `write`, `rename`, ...).
    pub operation_type: String,
}

/// A directed edge between two nodes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GraphEdge {
    pub from: PathBytes,
    pub to: PathBytes,
    /// `Contains` (directory to entry).
    pub kind: String,
}

/// `VexFS`'s observability context.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ObservabilityContext {
    pub metric_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_unit: Option<String>,
    pub service_name: String,
    pub operation_name: String,
}

/// Who performed the operation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Task name (up to 15 bytes, same encoding as paths).
    pub comm: PathBytes,
    /// The task's cgroup (v2) id: the inode number of its cgroup directory (absent: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cgroup_id: u64,
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's skip_serializing_if passes a reference")]
const fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// How the operation ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpResult {
    pub ok: bool,
    /// Raw syscall return value.
    pub ret: i64,
    /// Errno name (`ENOENT`, ...) when the operation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_back_what_it_writes() {
        let mut event = SemanticEvent::sample(EventType::FilesystemRename, "/w/a", 7, "mv", false);
        let fs = event.context.filesystem.as_mut().unwrap();
        fs.target_path = Some(PathBytes(b"/w/b\xff\n".to_vec()));
        fs.path_truncated = true;
        event.context.fuse.push(FuseRequest {
            opcode: 12,
            opcode_name: "RENAME".into(),
            ..FuseRequest::default()
        });
        event.context.parameters.insert("k".into(), "v".into());
        event.causality_links = vec![3, 4];
        event.priority = Priority::High;
        event.timeline = Some(Timeline { fuse_ns: 5, daemon_ns: Some(2), ..Timeline::default() });
        event.origin.cpu = 3;
        event.origin.sequence = 77;
        event.origin.part = COMPANION_PART;
        let line = serde_json::to_string(&event).unwrap();
        let back: SemanticEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), line);
        assert_eq!(back.origin, event.origin, "the origin is read back from its id");
        assert!(
            serde_json::from_str::<SemanticEvent>(&line.replace("\"priority\":2", "\"priority\":9")).is_err()
        );
    }
}
