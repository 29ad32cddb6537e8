//! FUSE requests, kernel side: `fuse/fuse_request_send` (in the requester's context, when the
//! request is queued for the daemon) and `fuse/fuse_request_end` (in the daemon's context, when
//! its reply arrives), paired by (connection, unique) into one record with both times, the opcode,
//! the error, the requester and the daemon thread. Field offsets come from tracefs via
//! `FUSE_CONFIG`. Kernels without those tracepoints (before 6.12) get the same pair as kprobes on
//! the functions that queue and end a request, reading `struct fuse_req` at offsets the loader
//! found in the kernel's BTF (`FUSE_KPROBE_LAYOUT`); both feed the same pairing, so the records
//! are the same. The daemon side (any daemon, no symbols): the syscall probes hand the reads and
//! writes of processes known to serve a connection to `daemon_read`/`daemon_write`, which
//! recognise requests and replies by their headers and note when the daemon got each request, its
//! node, its names, and when it replied.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, bpf_probe_read_user, generated,
    },
    macros::{kprobe, tracepoint},
    programs::{ProbeContext, TracePointContext},
};
use aya_log_ebpf::{info, warn};
use vexevent_common::{
    FUSE_NAME_BYTES, FuseBody, FuseDaemonSide, FuseKprobeLayout, FuseRequestKey, KernelStat, NOT_A_SYSCALL,
    OpKind, PATH_BUF, RECORD_PATHS_OFFSET, fuse_has_aux_node, fuse_has_entry_reply, fuse_name_layout,
};

use crate::{
    maps::{
        CONFIG, DAEMON_SERVING, FUSE_CONFIG, FUSE_CONNECTIONS, FUSE_DAEMONS, FUSE_INFLIGHT,
        FUSE_KPROBE_LAYOUT, FUSE_SCRATCH, SCRATCH, count,
    },
    record::{Task, header, high, low},
    ring::submit,
};

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: the offset is a field of this tracepoint's record, read from its format file.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

#[tracepoint]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_fuse_request_send(ctx: TracePointContext) -> u32 {
    let _ = on_send(&ctx);
    0
}

#[tracepoint]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_fuse_request_end(ctx: TracePointContext) -> u32 {
    let _ = on_end(&ctx);
    0
}

/// Kprobe on the function that queues a request for the daemon (`queue_request_and_unlock` up
/// to Linux 6.10): what `fuse/fuse_request_send` carries, read from the `struct fuse_req`.
#[kprobe]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_fuse_kprobe_send(ctx: ProbeContext) -> u32 {
    let _ = on_kprobe_send(&ctx);
    0
}

/// Kprobe on `fuse_request_end`: what `fuse/fuse_request_end` carries.
#[kprobe]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_fuse_kprobe_end(ctx: ProbeContext) -> u32 {
    let _ = on_kprobe_end(&ctx);
    0
}

fn on_send(ctx: &TracePointContext) -> Option<()> {
    let fuse = FUSE_CONFIG.get(0)?;
    let connection: u32 = read(ctx, fuse.send_connection)?;
    queued(connection, || Some((read(ctx, fuse.send_unique)?, read(ctx, fuse.send_opcode)?)))
}

fn on_end(ctx: &TracePointContext) -> Option<()> {
    let fuse = FUSE_CONFIG.get(0)?;
    let key = FuseRequestKey {
        connection: read(ctx, fuse.end_connection)?,
        padding: 0,
        unique: read(ctx, fuse.end_unique)?,
    };
    ended(&key, || read(ctx, fuse.end_error))
}

/// A kernel value at `base + offset`; a fault is counted.
#[inline(always)]
fn kernel<T>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: kernel memory read through the helper, which faults safely.
    let value = unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) };
    if value.is_err() {
        count(KernelStat::FuseReadFaults);
        warn!(&(), "FUSE kprobe: cannot read the kernel field at offset {}", offset);
    }
    value.ok()
}

/// `req->fm->fc->dev`: the connection number the tracepoints carry.
#[inline(always)]
fn connection_of(layout: &FuseKprobeLayout, req: u64) -> Option<u32> {
    let mount: u64 = kernel(req, layout.req_fm)?;
    let conn: u64 = kernel(mount, layout.mount_fc)?;
    kernel(conn, layout.conn_dev)
}

fn on_kprobe_send(ctx: &ProbeContext) -> Option<()> {
    let layout = FUSE_KPROBE_LAYOUT.get(0)?;
    // `queue_request_and_unlock(fiq, req)`: the request is the second argument. (A constant:
    // the verifier refuses a context read at an offset chosen at run time.)
    let req: u64 = ctx.arg(1)?;
    let connection = connection_of(layout, req)?;
    queued(connection, || Some((kernel(req, layout.req_in_unique)?, kernel(req, layout.req_in_opcode)?)))
}

fn on_kprobe_end(ctx: &ProbeContext) -> Option<()> {
    let layout = FUSE_KPROBE_LAYOUT.get(0)?;
    let req: u64 = ctx.arg(0)?;
    let key = FuseRequestKey {
        connection: connection_of(layout, req)?,
        padding: 0,
        unique: kernel(req, layout.req_in_unique)?,
    };
    ended(&key, || kernel(req, layout.req_out_error))
}

/// A request was queued for the daemon on `connection`: remember it (unique and opcode from
/// `fields`, read only once the connection is known to be watched) with its requester.
#[inline(always)]
fn queued(connection: u32, fields: impl FnOnce() -> Option<(u64, u32)>) -> Option<()> {
    let fuse = FUSE_CONFIG.get(0)?;
    let config = CONFIG.get(0)?;
    count(KernelStat::Seen);
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == config.self_pid {
        count(KernelStat::FilteredSelf);
        return None;
    }
    if fuse.watch_all == 0 && FUSE_CONNECTIONS.get_ptr(connection).is_none() {
        count(KernelStat::FuseFilteredConnection);
        return None;
    }
    let (unique, opcode) = fields()?;
    let key = FuseRequestKey { connection, padding: 0, unique };
    // Too large for the stack: assembled in per-CPU scratch space.
    let request = FUSE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let request = unsafe { &mut *request };
    request.opcode = opcode;
    // SAFETY: no preconditions.
    request.queued_ns = unsafe { bpf_ktime_get_ns() };
    request.requester = pid_tgid;
    request.uid_gid = bpf_get_current_uid_gid();
    request.comm = bpf_get_current_comm().unwrap_or_default();
    request.daemon = FuseDaemonSide::default();
    request.name1_len = 0;
    request.name2_len = 0;
    // By reference: a copy of the ~600-byte request would not fit the 512-byte eBPF stack.
    #[expect(clippy::needless_borrows_for_generic_args, reason = "a copy would not fit the eBPF stack")]
    let inserted = FUSE_INFLIGHT.insert(key, &*request, 0);
    if inserted.is_err() {
        count(KernelStat::LostInflightFull);
        return None;
    }
    count(KernelStat::FuseRequests);
    Some(())
}

/// The reply to the request `key` arrived (its error from `reply`): one record.
#[inline(always)]
fn ended(key: &FuseRequestKey, reply: impl FnOnce() -> Option<i32>) -> Option<()> {
    let fuse = FUSE_CONFIG.get(0)?;
    let Some(request) = FUSE_INFLIGHT.get_ptr(key) else {
        if fuse.watch_all != 0 || FUSE_CONNECTIONS.get_ptr(key.connection).is_some() {
            count(KernelStat::FuseUnmatchedEnd);
        }
        return None;
    };
    // The reply arrives in the daemon's context: remember which connection it serves, so that
    // its /dev/fuse reads and writes are recognised.
    let daemon = bpf_get_current_pid_tgid();
    if daemon_connection(high(daemon)) != Some(key.connection) {
        let _ = FUSE_DAEMONS.insert(high(daemon), key.connection, 0);
        info!(&(), "FUSE: pid {} is the daemon of connection {}", high(daemon), key.connection);
    }
    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let record = unsafe { &mut *record };
    // SAFETY: the entry is read before it is removed, and only this program removes it.
    let request = unsafe { &*request };
    let name1_len = (request.name1_len as usize).min(FUSE_NAME_BYTES - 1);
    let name2_len = (request.name2_len as usize).min(FUSE_NAME_BYTES - 1);
    let (paths1, paths2) = record.paths.split_at_mut(PATH_BUF);
    // SAFETY: both buffers hold at least FUSE_NAME_BYTES bytes of map values.
    unsafe {
        let _ = bpf_probe_read_kernel_buf(request.name1.as_ptr(), &mut paths1[..FUSE_NAME_BYTES]);
        let _ = bpf_probe_read_kernel_buf(request.name2.as_ptr(), &mut paths2[..FUSE_NAME_BYTES]);
    }
    let daemon_side = request.daemon;
    let (opcode, queued_ns, requester, uid_gid, comm) =
        (request.opcode, request.queued_ns, request.requester, request.uid_gid, request.comm);
    let _ = FUSE_INFLIGHT.remove(key);
    let error = reply()?;
    // The requester's cgroup is not kept with the request: unknown (its syscall's event has it).
    let requester = Task { pid_tgid: requester, uid_gid, comm, cgroup_id: 0 };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    record.header =
        header(OpKind::FuseRequest as u32, NOT_A_SYSCALL, &requester, queued_ns, now, i64::from(error));
    record.header.path1_len = name1_len as u32;
    record.header.path2_len = name2_len as u32;
    record.body.fuse = FuseBody {
        connection: key.connection,
        opcode,
        unique: key.unique,
        daemon_pid: high(daemon),
        daemon_tid: low(daemon),
        daemon: daemon_side,
    };
    let size = if name2_len > 0 {
        RECORD_PATHS_OFFSET + PATH_BUF + (name2_len & (FUSE_NAME_BYTES - 1))
    } else {
        RECORD_PATHS_OFFSET + (name1_len & (FUSE_NAME_BYTES - 1))
    };
    submit(record, size);
    Some(())
}

/// `fuse_in_header`, what the daemon reads from /dev/fuse before the request's body.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InHeader {
    len: u32,
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
    extlen: u16,
    padding: u16,
}

/// `fuse_out_header`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct OutHeader {
    len: u32,
    error: i32,
    unique: u64,
}

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoVec {
    base: u64,
    len: u64,
}

/// The connection a FUSE daemon serves, when `tgid` is one.
#[inline(always)]
pub fn daemon_connection(tgid: u32) -> Option<u32> {
    // SAFETY: a plain value read.
    FUSE_DAEMONS.get_ptr(tgid).map(|connection| unsafe { *connection })
}

/// The user buffer of a read/write (`buf`) or of the first iovec of a readv/writev.
#[inline(always)]
fn first_buffer(vectored: bool, arg: u64) -> Option<u64> {
    if !vectored {
        return Some(arg);
    }
    // SAFETY: an iovec in user memory; the helper faults safely.
    let base: u64 = unsafe { bpf_probe_read_user(arg as *const u64) }.ok()?;
    Some(base)
}

/// A daemon's read returned `len` bytes into `buffer`: when it is a request vexevent is
/// following, note when the daemon got it, its node and its names.
#[inline(always)]
pub fn daemon_read(connection: u32, vectored: bool, buffer: u64, len: i64, reader: u64) -> Option<()> {
    if len < core::mem::size_of::<InHeader>() as i64 {
        return None;
    }
    let buffer = first_buffer(vectored, buffer)?;
    // SAFETY: user memory; the helper faults safely.
    let header: InHeader = unsafe { bpf_probe_read_user(buffer as *const InHeader) }.ok()?;
    let key = FuseRequestKey { connection, padding: 0, unique: header.unique };
    let request = FUSE_INFLIGHT.get_ptr_mut(key)?;
    // SAFETY: the entry of a request in flight; only the daemon thread that read it writes here.
    let request = unsafe { &mut *request };
    // SAFETY: no preconditions.
    request.daemon.received_ns = unsafe { bpf_ktime_get_ns() };
    request.daemon.nodeid = header.nodeid;
    request.daemon.reader = reader;
    let _ = DAEMON_SERVING.insert(low(reader), key, 0);
    count(KernelStat::FuseDaemonReads);
    let (skip, two_names) = fuse_name_layout(header.opcode)?;
    let body = buffer + core::mem::size_of::<InHeader>() as u64;
    if fuse_has_aux_node(header.opcode) {
        // SAFETY: user memory; the helper faults safely.
        request.daemon.aux_nodeid = unsafe { bpf_probe_read_user(body as *const u64) }.unwrap_or(0);
    }
    // SAFETY: the destination is FUSE_NAME_BYTES of map value; the helper bounds the copy.
    let copied = unsafe {
        generated::bpf_probe_read_user_str(
            request.name1.as_mut_ptr().cast(),
            FUSE_NAME_BYTES as u32,
            (body + skip) as *const _,
        )
    };
    if copied <= 0 {
        return None;
    }
    request.name1_len = (copied - 1) as u32;
    if two_names {
        // SAFETY: as above.
        let copied2 = unsafe {
            generated::bpf_probe_read_user_str(
                request.name2.as_mut_ptr().cast(),
                FUSE_NAME_BYTES as u32,
                (body + skip + copied as u64) as *const _,
            )
        };
        if copied2 > 0 {
            request.name2_len = (copied2 - 1) as u32;
        }
    }
    Some(())
}

/// Where a reply's body starts: right after the header in the same buffer, or (libfuse writes
/// the header as an iovec of its own) at the second iovec.
#[inline(always)]
fn reply_body(vectored: bool, arg: u64) -> Option<(u64, u64)> {
    const HEADER: u64 = core::mem::size_of::<OutHeader>() as u64;
    if !vectored {
        return Some((arg, arg + HEADER));
    }
    // SAFETY: iovecs in user memory; the helper faults safely.
    let first: IoVec = unsafe { bpf_probe_read_user(arg as *const IoVec) }.ok()?;
    if first.len > HEADER {
        return Some((first.base, first.base + HEADER));
    }
    // SAFETY: as above.
    let second: IoVec = unsafe { bpf_probe_read_user((arg + 16) as *const IoVec) }.ok()?;
    Some((first.base, second.base))
}

/// A daemon is about to write `buffer`: when it is a reply to a request vexevent is following,
/// note when, and the node an entry reply names.
#[inline(always)]
pub fn daemon_write(connection: u32, vectored: bool, buffer: u64) -> Option<()> {
    let (buffer, body) = reply_body(vectored, buffer)?;
    // SAFETY: user memory; the helper faults safely.
    let header: OutHeader = unsafe { bpf_probe_read_user(buffer as *const OutHeader) }.ok()?;
    let key = FuseRequestKey { connection, padding: 0, unique: header.unique };
    let request = FUSE_INFLIGHT.get_ptr_mut(key)?;
    // SAFETY: the entry of a request in flight.
    let request = unsafe { &mut *request };
    // SAFETY: no preconditions.
    request.daemon.replied_ns = unsafe { bpf_ktime_get_ns() };
    if header.error == 0
        && fuse_has_entry_reply(request.opcode)
        && header.len as usize >= core::mem::size_of::<OutHeader>() + 8
    {
        // SAFETY: user memory; the helper faults safely. `fuse_entry_out` starts with the nodeid.
        request.daemon.reply_nodeid = unsafe { bpf_probe_read_user(body as *const u64) }.unwrap_or(0);
    }
    count(KernelStat::FuseDaemonReplies);
    Some(())
}
