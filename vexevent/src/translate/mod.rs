//! The only code that turns kernel records into [`SemanticEvent`]s: resolves paths against the
//! process's cwd and fds, picks the `VexFS` event type, fills the contexts, and derives
//! `ObservabilityErrorReported` for failed operations.

mod config;
mod errno;
mod fuse;
mod fuse_nodes;
mod ioctl;
mod kernel;
mod paths;
mod process;
mod source;
mod vexfs;

pub use config::VexfsConfig;
pub use errno::errno_name;
pub use fuse::opcode_name;
pub use ioctl::{VexfsIoctl, decode_vexfs_ioctl};
pub use paths::{normalize, resolve};
pub use process::{FileInfo, PathStat, ProcessTable, file_type_of, stat_path};
pub use source::KernelSource;
pub use vexfs::VexfsRoots;

use std::{
    collections::HashSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use vexevent_common::{
    FuseBody, GAP_RECORD_SIZE, OpKind, RecordHeader, fuse_is_rename, fuse_name_layout, fuse_opcode,
    record_flags,
};

use crate::{
    capture::{Body, Captured, GapRecord, RawRecord, SyscallArgs},
    event::{
        Context, EVENT_VERSION, EventType, FilesystemContext, FuseRequest, GapContext, NodeId,
        ObservabilityContext, OpResult, PathBytes, Priority, ProcessInfo, Run, SemanticEvent, Timestamp,
        WatchScope, flags, next_event_id,
    },
    telemetry::{Counters, add},
};

/// `O_CREAT`, `O_EXCL` for the open flags argument.
const O_CREAT: u64 = libc::O_CREAT as u64;
const O_EXCL: u64 = libc::O_EXCL as u64;
/// `unlinkat`'s flag that makes it an rmdir.
const AT_REMOVEDIR: u64 = libc::AT_REMOVEDIR as u64;
/// File systems stamp birth times with the coarse clock, up to a tick (4 ms at HZ=250, 10 ms at
/// HZ=100) behind the syscall's own clock.
const BIRTH_CLOCK_SLACK: Duration = Duration::from_millis(10);

/// What became of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Produced this many events.
    Events(usize),
    /// Only updated path state.
    Bookkeeping,
    /// Operation type not selected.
    Suppressed,
    /// Outside the watched directories once normalized.
    OutOfScope,
}

/// Settings of translation.
#[derive(Clone, Debug)]
pub struct TranslateOptions {
    pub scope: WatchScope,
    /// Operation types to emit events for.
    pub ops: HashSet<OpKind>,
    /// FUSE connections and their mount points (the root node's path).
    pub fuse_mounts: Vec<(u32, Vec<u8>)>,
    /// Where `VexFS` semantics apply.
    pub vexfs: VexfsRoots,
}

/// Turns records into events, keeping per-process path state.
pub struct Translator {
    options: TranslateOptions,
    processes: ProcessTable,
    fuse_nodes: fuse_nodes::FuseNodes,
    /// Wall clock minus `CLOCK_MONOTONIC`, in nanoseconds.
    wall_offset_ns: i128,
    /// This run of vexevent, and its node: the origin of every event.
    run: Run,
    /// Tracepoints and functions attached by name.
    kernel_sources: kernel::KernelSources,
}

/// Wall clock minus `CLOCK_MONOTONIC` now, in nanoseconds.
#[must_use]
pub fn wall_clock_offset_ns() -> i128 {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i128::try_from(wall.as_nanos()).unwrap_or(i128::MAX) - i128::from(crate::telemetry::monotonic_ns())
}

/// A successful return value that is an fd: the C `int` in the low 32 bits.
#[expect(clippy::cast_possible_truncation, reason = "C int ABI: the low half is the value")]
const fn ret_int(header: &RecordHeader) -> i32 {
    header.ret as i32
}

fn comm_of(header: &RecordHeader) -> PathBytes {
    let end = header.comm.iter().position(|&b| b == 0).unwrap_or(header.comm.len());
    PathBytes::from(&header.comm[..end])
}

/// Mode bits as the octal text users read.
fn octal_mode(mode: u32) -> String {
    format!("{:o}", mode & 0o7777)
}

impl Translator {
    #[must_use]
    pub fn new(options: TranslateOptions) -> Self {
        let mut fuse_nodes = fuse_nodes::FuseNodes::default();
        for (connection, mount_point) in &options.fuse_mounts {
            fuse_nodes.add_mount(*connection, mount_point.clone());
        }
        Self {
            fuse_nodes,
            options,
            processes: ProcessTable::default(),
            wall_offset_ns: wall_clock_offset_ns(),
            run: Run::new(NodeId::host()),
            kernel_sources: kernel::KernelSources::default(),
        }
    }

    /// The run (node and run id) events are stamped with (default: a run of the host name); set
    /// before the first record.
    pub fn set_run(&mut self, run: Run) {
        self.run = run;
    }

    /// The operation types to emit events for, from now on (a reload).
    pub fn set_ops(&mut self, ops: HashSet<OpKind>) {
        self.options.ops = ops;
    }

    /// Seeds what a process already had open or where it already was before the run started.
    pub fn processes_mut(&mut self) -> &mut ProcessTable {
        &mut self.processes
    }

    fn wall_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(i128::from(monotonic_ns) + self.wall_offset_ns).unwrap_or(0)
    }

    /// Resolves path `which` (1 or 2) of a record to an absolute path.
    fn resolve_path(&mut self, record: &RawRecord, which: u8) -> Option<Vec<u8>> {
        let header = &record.header;
        let args = record.args()?;
        let (raw, dirfd) = match which {
            1 => (record.path1.as_deref()?, args.dirfd1),
            _ => (record.path2.as_deref()?, args.dirfd2),
        };
        if raw.first() == Some(&b'/') {
            return Some(normalize(raw));
        }
        let base = match dirfd {
            Some(fd) if fd != libc::AT_FDCWD => self.processes.fd(header.pid, fd).map(|f| f.path),
            _ => self.processes.cwd(header.pid),
        };
        Some(resolve(base.as_deref(), raw))
    }

    fn fd_arg(record: &RawRecord) -> Option<i32> {
        record.args()?.fd
    }

    /// The file behind the record's fd argument, by its open file when the record names it.
    fn fd_file(&mut self, record: &RawRecord, fd: i32) -> Option<FileInfo> {
        let key = record.args().and_then(|args| args.file_key);
        self.processes.open_file(record.header.pid, fd, key)
    }

    /// Translates what capture delivered: an operation record or a gap report.
    pub fn translate_captured(
        &mut self,
        captured: &Captured,
        out: &mut Vec<SemanticEvent>,
        counters: &Counters,
    ) -> Disposition {
        match captured {
            Captured::Record(record) => self.translate(record, out, counters),
            Captured::Gap(gap) => {
                add(&counters.gap_records, 1);
                out.push(self.gap_event(gap));
                add(&counters.events_translated, 1);
                Disposition::Events(1)
            }
        }
    }

    /// An `ObservabilityAlertTriggered` event saying which records a CPU lost.
    fn gap_event(&self, gap: &GapRecord) -> SemanticEvent {
        let lost_by_operation = gap.by_kind.iter().map(|(op, n)| (op.name().to_owned(), *n)).collect();
        SemanticEvent {
            event_id: next_event_id(),
            origin: self.run.origin(gap.cpu, gap.first_seq),
            event_type: EventType::ObservabilityAlertTriggered,
            event_type_code: EventType::ObservabilityAlertTriggered.code(),
            event_subtype: "records_lost".to_owned(),
            timestamp: Timestamp {
                wall_ns: self.wall_ns(gap.reported_ns),
                monotonic_ns: gap.reported_ns,
                cpu: gap.cpu,
                pid: 0,
                sequence: gap.first_seq,
                hlc: None,
            },
            global_sequence: 0,
            local_sequence: gap.first_seq,
            flags: flags::DEFAULT,
            priority: Priority::Critical,
            event_size: u32::try_from(GAP_RECORD_SIZE).unwrap_or(u32::MAX),
            event_version: EVENT_VERSION,
            parent_event_id: None,
            causality_links: Vec::new(),
            context: Context {
                observability: Some(ObservabilityContext {
                    metric_name: "records_lost".to_owned(),
                    #[expect(clippy::cast_precision_loss, reason = "a count shown as a metric value")]
                    metric_value: Some(gap.count as f64),
                    metric_unit: Some("records".to_owned()),
                    service_name: "vexevent".to_owned(),
                    operation_name: "capture".to_owned(),
                }),
                gap: Some(GapContext {
                    cpu: gap.cpu,
                    first_sequence: gap.first_seq,
                    count: gap.count,
                    lost_by_operation,
                    lost_from_ns: gap.lost_from_ns,
                    lost_to_ns: gap.lost_to_ns,
                }),
                ..Context::default()
            },
            process: None,
            result: None,
            duration_ns: 0,
            timeline: None,
        }
    }

    /// A FUSE request on its own (the correlate stage joins it to the syscall that caused it),
    /// with the path of its node when the daemon side was seen. Metadata requests (lookups,
    /// attribute reads, flushes) get priority Background.
    fn fuse_event(&mut self, record: &RawRecord, body: &FuseBody) -> SemanticEvent {
        let request = fuse::request_of(record, body);
        let (event_type, metadata) = fuse::opcode_event_type(request.opcode);
        let error = (request.error != 0).then(|| errno_name(request.error.saturating_neg()));
        let result = OpResult { ok: request.error == 0, ret: i64::from(request.error), error };
        let priority = if metadata { Priority::Background } else { Priority::Normal };
        let subtype = format!("FUSE_{}", request.opcode_name);
        let filesystem = self.fuse_paths(&request);
        let context = Context { fuse: vec![request], filesystem, ..Context::default() };
        self.event(record, event_type, subtype, context, result, priority)
    }

    /// The paths a FUSE request is about, from its node and names; learns the nodes its reply
    /// names and follows renames.
    fn fuse_paths(&mut self, request: &FuseRequest) -> Option<FilesystemContext> {
        let node = request.nodeid?;
        let connection = request.connection;
        let name = request.name.as_ref().map(PathBytes::as_bytes);
        let path = match name {
            Some(name) if fuse_name_layout(request.opcode).is_some() => {
                self.fuse_nodes.child(connection, node, name)?
            }
            _ => self.fuse_nodes.path(connection, node)?.to_vec(),
        };
        let mut target = None;
        if request.error == 0 {
            if let Some(entry) = request.entry_nodeid {
                self.fuse_nodes.learn(connection, entry, path.clone());
            }
        }
        if fuse_is_rename(request.opcode) {
            // RENAME's new parent travels as the auxiliary node, its new name as the second name.
            let new_path = request.second_name.as_ref().and_then(|new_name| {
                self.fuse_nodes.child(connection, request.aux_nodeid?, new_name.as_bytes())
            });
            if let (Some(new_path), 0) = (&new_path, request.error) {
                self.fuse_nodes.rename(connection, &path, new_path);
            }
            target = new_path.map(PathBytes);
        } else if request.opcode == fuse_opcode::SYMLINK {
            target.clone_from(&request.second_name);
        }
        Some(FilesystemContext {
            path: Some(PathBytes(path)),
            target_path: target,
            ..FilesystemContext::default()
        })
    }

    /// Translates one record, appending its events to `out`.
    pub fn translate(
        &mut self,
        record: &RawRecord,
        out: &mut Vec<SemanticEvent>,
        counters: &Counters,
    ) -> Disposition {
        let disposition = self.translate_inner(record, out);
        match disposition {
            Disposition::Events(n) => add(&counters.events_translated, n as u64),
            Disposition::Bookkeeping => add(&counters.bookkeeping_records, 1),
            Disposition::Suppressed => add(&counters.suppressed_op, 1),
            Disposition::OutOfScope => add(&counters.filtered_scope_userspace, 1),
        }
        disposition
    }

    #[expect(clippy::too_many_lines, reason = "one arm per operation kind reads best as one match")]
    fn translate_inner(&mut self, record: &RawRecord, out: &mut Vec<SemanticEvent>) -> Disposition {
        let header = &record.header;
        let ok = header.ret >= 0;
        let syscall = record.syscall.map_or("fork", |e| e.name);
        let no_args = SyscallArgs::default();
        let args = record.args().unwrap_or(&no_args);
        let mut subtype = syscall;
        let mut fs = FilesystemContext {
            path_truncated: header.flags & record_flags::PATH1_TRUNCATED != 0,
            ..FilesystemContext::default()
        };
        let mut context = Context::default();

        if let Body::Fuse(request) = &record.body {
            out.push(self.fuse_event(record, request));
            return Disposition::Events(1);
        }
        if let Body::Kernel(body) = &record.body {
            return self.kernel_event(record, body, out);
        }
        // Bookkeeping first: state changes apply whether or not an event is emitted.
        let event_type = match record.op {
            OpKind::Fork => {
                if let Body::Fork(fork) = &record.body {
                    self.processes.fork(header.pid, fork.child_pid);
                }
                return Disposition::Bookkeeping;
            }
            OpKind::Chdir => {
                if ok {
                    let cwd = match Self::fd_arg(record) {
                        Some(fd) => self.fd_file(record, fd).map(|f| f.path),
                        None => self.resolve_path(record, 1),
                    };
                    if let Some(cwd) = cwd {
                        self.processes.set_cwd(header.pid, cwd);
                    }
                }
                return Disposition::Bookkeeping;
            }
            OpKind::Dup => {
                if ok {
                    if let Some(old) = Self::fd_arg(record) {
                        self.processes.dup_fd(header.pid, old, ret_int(header), header.exit_ns);
                    }
                }
                return Disposition::Bookkeeping;
            }
            OpKind::Open => {
                let path = self.resolve_path(record, 1).unwrap_or_default();
                let open_flags = args.open_flags.unwrap_or(0);
                // What the kernel said of the new file; without it (no BTF offsets), an lstat of
                // the path now, and a birth time within the syscall taken for a creation.
                let (stat, created) = match (ok, args.opened) {
                    (true, Some(opened)) => (
                        Some(PathStat {
                            inode: opened.inode,
                            file_type: file_type_of(opened.mode),
                            born: None,
                        }),
                        opened.created,
                    ),
                    (true, None) => {
                        let stat = stat_path(&path);
                        let created = open_flags & O_CREAT != 0
                            && (open_flags & O_EXCL != 0
                                || self.born_during(stat.and_then(|s| s.born), header));
                        (stat, created)
                    }
                    // A failed open with O_CREAT is a failed creation.
                    (false, _) => (None, open_flags & O_CREAT != 0),
                };
                if ok {
                    let info = FileInfo {
                        path: path.clone(),
                        inode: stat.map(|s| s.inode),
                        file_type: stat.map(|s| s.file_type),
                    };
                    // By its number too: later paths are relative to it as a directory fd.
                    if let Some(key) = args.file_key {
                        self.processes.set_file(key, info.clone());
                    }
                    self.processes.set_fd(header.pid, ret_int(header), info, header.exit_ns);
                }
                fs.inode_number = stat.map(|s| s.inode);
                fs.file_type = stat.map(|s| s.file_type);
                if open_flags & O_CREAT != 0 {
                    fs.mode = args.mode.map(octal_mode);
                }
                fs.fd = ok.then_some(ret_int(header));
                fs.path = Some(PathBytes(path));
                if created { EventType::FilesystemCreate } else { EventType::FilesystemRead }
            }
            OpKind::Close => {
                let fd = args.fd.unwrap_or(-1);
                // An fd this process did not open (inherited, passed) is found by its open file,
                // which outlives the fd (shared with a dup or a fork): kept.
                let info = match args.file_key {
                    Some(key) => self
                        .processes
                        .take_fd(header.pid, fd, header.enter_ns)
                        .or_else(|| self.processes.file(key)),
                    None => self.processes.close_fd(header.pid, fd, header.enter_ns),
                };
                Self::fill_from_fd(&mut fs, info, fd);
                EventType::FilesystemRead
            }
            OpKind::Read | OpKind::Write | OpKind::Fsync | OpKind::Ioctl => {
                let fd = args.fd.unwrap_or(-1);
                let info = self.fd_file(record, fd);
                Self::fill_from_fd(&mut fs, info, fd);
                if matches!(record.op, OpKind::Read | OpKind::Write) {
                    fs.bytes = ok.then_some(header.ret.cast_unsigned());
                    fs.offset = args.offset;
                }
                match record.op {
                    OpKind::Read => EventType::FilesystemRead,
                    OpKind::Write => EventType::FilesystemWrite,
                    OpKind::Fsync => EventType::SystemSync,
                    _ => {
                        let Some(decoded) = args.ioctl.as_ref().and_then(|call| {
                            decode_vexfs_ioctl(call.cmd, call.arg.as_ref().map(|arg| &arg[..]), ok)
                        }) else {
                            return Disposition::Suppressed;
                        };
                        context.vector = Some(decoded.vector);
                        subtype = decoded.name;
                        decoded.event_type
                    }
                }
            }
            op => {
                // Path-based operations.
                let Some(path) = self.resolve_path(record, 1) else {
                    return self.emit_fd_based(record, op, fs, out);
                };
                let target = if record.text2 { record.path2.clone() } else { self.resolve_path(record, 2) };
                let in_scope = self.options.scope.contains(&path)
                    || (!record.text2 && target.as_deref().is_some_and(|t| self.options.scope.contains(t)));
                if !in_scope {
                    return Disposition::OutOfScope;
                }
                let stat = if ok && !matches!(op, OpKind::Unlink | OpKind::Rmdir | OpKind::Umount) {
                    stat_path(if op == OpKind::Rename { target.as_deref().unwrap_or(&path) } else { &path })
                } else {
                    None
                };
                fs.inode_number = stat.map(|s| s.inode);
                fs.file_type = stat.map(|s| s.file_type);
                fs.path = Some(PathBytes(path));
                Self::fill_path_op(&mut fs, args, op, target)
            }
        };
        if !self.options.ops.contains(&record.op) {
            return Disposition::Suppressed;
        }
        context.filesystem = Some(fs);
        self.emit(record, event_type, subtype, context, out)
    }

    /// Operations with a path argument but no path captured (fsetxattr, fchmod, ...) act on an fd.
    fn emit_fd_based(
        &mut self,
        record: &RawRecord,
        op: OpKind,
        mut fs: FilesystemContext,
        out: &mut Vec<SemanticEvent>,
    ) -> Disposition {
        let fd = Self::fd_arg(record).unwrap_or(-1);
        let info = self.fd_file(record, fd);
        Self::fill_from_fd(&mut fs, info, fd);
        let syscall = record.syscall.map_or("", |e| e.name);
        let target = record.path2.clone();
        let no_args = SyscallArgs::default();
        let event_type = Self::fill_path_op(&mut fs, record.args().unwrap_or(&no_args), op, target);
        if !self.options.ops.contains(&op) {
            return Disposition::Suppressed;
        }
        let context = Context { filesystem: Some(fs), ..Context::default() };
        self.emit(record, event_type, syscall, context, out)
    }

    fn fill_from_fd(fs: &mut FilesystemContext, info: Option<FileInfo>, fd: i32) {
        fs.fd = Some(fd);
        if let Some(info) = info {
            fs.path = Some(PathBytes(info.path));
            fs.inode_number = info.inode;
            fs.file_type = info.file_type;
        }
    }

    /// Event type and operation-specific fields of path-based (and f*-variant) operations.
    fn fill_path_op(
        fs: &mut FilesystemContext,
        args: &SyscallArgs,
        op: OpKind,
        target: Option<Vec<u8>>,
    ) -> EventType {
        match op {
            OpKind::Rename => {
                fs.target_path = target.map(PathBytes);
                EventType::FilesystemRename
            }
            OpKind::Unlink if args.at_flags.is_some_and(|flags| flags & AT_REMOVEDIR != 0) => {
                EventType::FilesystemRmdir
            }
            OpKind::Unlink => EventType::FilesystemDelete,
            OpKind::Rmdir => EventType::FilesystemRmdir,
            OpKind::Mkdir => {
                fs.mode = args.mode.map(octal_mode);
                EventType::FilesystemMkdir
            }
            OpKind::Symlink => {
                fs.target_path = target.map(PathBytes);
                EventType::FilesystemSymlink
            }
            OpKind::Link => {
                // The event's path is the new link; the target is the existing file.
                let new_link = target.map(PathBytes);
                fs.target_path = fs.path.take();
                fs.path = new_link;
                EventType::FilesystemHardlink
            }
            OpKind::Chmod => {
                fs.mode = args.mode.map(octal_mode);
                EventType::FilesystemChmod
            }
            OpKind::Chown => {
                fs.uid = args.uid;
                fs.gid = args.gid;
                EventType::FilesystemChown
            }
            OpKind::Truncate => {
                fs.size = args.size;
                EventType::FilesystemTruncate
            }
            OpKind::SetXattr | OpKind::RemoveXattr => {
                let set = op == OpKind::SetXattr;
                let graph = target.as_deref().is_some_and(|name| name.starts_with(b"user.vexfs.graph."));
                fs.xattr_name = target.map(PathBytes);
                match (graph, set) {
                    (true, true) => EventType::GraphPropertySet,
                    (true, false) => EventType::GraphPropertyDelete,
                    _ => EventType::FilesystemWrite,
                }
            }
            OpKind::Mount => {
                fs.target_path = target.map(PathBytes);
                EventType::SystemMount
            }
            _ => EventType::SystemUnmount,
        }
    }

    /// Whether a file's birth time falls within the syscall (allowing for the coarse clock).
    fn born_during(&self, born: Option<SystemTime>, header: &RecordHeader) -> bool {
        let Some(born) = born else {
            // No birth time (file gone again, or not recorded): an O_CREAT open most likely created.
            return true;
        };
        let born_ns = born.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let enter_ns = u128::from(self.wall_ns(header.enter_ns));
        born_ns + BIRTH_CLOCK_SLACK.as_nanos() >= enter_ns
    }

    /// Appends the event (and, on failure, its `ErrorReported` companion).
    fn emit(
        &mut self,
        record: &RawRecord,
        event_type: EventType,
        subtype: &str,
        context: Context,
        out: &mut Vec<SemanticEvent>,
    ) -> Disposition {
        let header = &record.header;
        let ok = header.ret >= 0;
        let errno = (!ok).then(|| i32::try_from(-header.ret).unwrap_or(i32::MAX));
        let result = OpResult { ok, ret: header.ret, error: errno.map(errno_name) };
        let mut event = self.event(record, event_type, subtype.to_owned(), context, result, Priority::Normal);
        let on_vexfs = event
            .context
            .filesystem
            .as_ref()
            .and_then(|fs| fs.path.as_ref())
            .is_some_and(|path| self.options.vexfs.contains(path.as_bytes()));
        if on_vexfs {
            vexfs::reinterpret(&mut event, record.op, record.payload.as_deref());
        }
        let companion = event.error_companion();
        let derived = if on_vexfs { vexfs::derive_graph(&event) } else { Vec::new() };
        let count = 1 + usize::from(companion.is_some()) + derived.len();
        out.push(event);
        out.extend(companion);
        out.extend(derived);
        Disposition::Events(count)
    }

    fn event(
        &self,
        record: &RawRecord,
        event_type: EventType,
        event_subtype: String,
        context: Context,
        result: OpResult,
        priority: Priority,
    ) -> SemanticEvent {
        let header = &record.header;
        SemanticEvent {
            event_id: next_event_id(),
            origin: self.run.origin(header.cpu, header.seq),
            event_type,
            event_type_code: event_type.code(),
            event_subtype,
            timestamp: Timestamp {
                wall_ns: self.wall_ns(header.exit_ns),
                monotonic_ns: header.exit_ns,
                cpu: header.cpu,
                pid: header.pid,
                sequence: header.seq,
                hlc: None,
            },
            global_sequence: 0,
            local_sequence: header.seq,
            flags: flags::DEFAULT,
            priority,
            event_size: record.size,
            event_version: EVENT_VERSION,
            parent_event_id: None,
            causality_links: Vec::new(),
            context,
            process: Some(ProcessInfo {
                pid: header.pid,
                tid: header.tid,
                uid: header.uid,
                gid: header.gid,
                comm: comm_of(header),
                cgroup_id: header.cgroup_id,
            }),
            result: Some(result),
            duration_ns: header.exit_ns.saturating_sub(header.enter_ns),
            timeline: None,
        }
    }
}

#[cfg(test)]
mod tests;
