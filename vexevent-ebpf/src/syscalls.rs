//! The syscall tracepoint pair, attached to `raw_syscalls/sys_{enter,exit}`; the syscall table
//! in `SYSCALL_SPECS` says which syscalls matter and how. Enter filters (self, op, pid, uid, comm, fd scope) and remembers the arguments; exit reads the
//! paths (reliable only once the syscall has faulted them in), decides path scope, updates the
//! fd/cwd scope maps and submits one record.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::{bpf_probe_read_user as bpf_probe_read_user_raw, bpf_probe_read_user_str},
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use vexevent_common::{
    FMODE_CREATED, IOCTL_ARG_BYTES, KernelStat, NO_ARG, OpKind, OpenFile, PATH_BUF, RECORD_PATHS_OFFSET,
    RecordBuf, SYSCALL_ARGS, SyscallSpec, VEXFS_IOCTL_TYPE, record_flags, spec_flags,
};

use crate::{
    fuse::{daemon_connection, daemon_read, daemon_write},
    maps::{
        ARG_SLOTS, Args, CONFIG, FILE_LAYOUT, INFLIGHT, Inflight, OpenFd, PID_FILTER, SCRATCH, SYSCALL_SPECS,
        count,
    },
    record::{Task, header, high, low},
    ring::submit,
    scope::{
        NOT_WATCHED, VEXFS_SPECIAL, WATCHED, fd_in_scope, file_inode, forget_if_last, is_vexfs_special,
        locate_fd, mark_cwd, mark_file, open_fd, path_in_scope,
    },
};

/// Offset of `id` (the syscall number, a long) in both
/// `raw_syscalls/sys_enter` and `raw_syscalls/sys_exit` records (tracefs format).
const SYSCALL_NR_OFFSET: usize = 8;
/// Offset of `args[0]` in `sys_enter` and of `ret` in `sys_exit`.
const ARGS_OFFSET: usize = 16;

// Two hook types share the logic below: BTF raw tracepoints (`tp_btf`, cheapest: no perf
// buffer, direct loads from `pt_regs`) and, where the kernel lacks BTF, classic tracepoints. The
// loader picks one pair and reports which.

/// Offsets in `x86_64` `struct pt_regs` of the syscall arguments (di, si, dx, r10, r8, r9) and of
/// `orig_ax` (the syscall number).
const PT_REGS_ARG_OFFSETS: [usize; SYSCALL_ARGS] = [112, 104, 96, 56, 72, 64];
const PT_REGS_ORIG_AX: usize = 120;

#[btf_tracepoint(function = "sys_enter")]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_btf_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let nr: i64 = ctx.arg(1);
    let _ = on_enter(nr, || PT_REGS_ARG_OFFSETS.map(|offset| regs_field(regs, offset)));
    0
}

#[btf_tracepoint(function = "sys_exit")]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_btf_sys_exit(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let _ = on_exit(regs_field(regs, PT_REGS_ORIG_AX) as i64, ret);
    0
}

/// Loads a field of `pt_regs` (a BTF pointer: the verifier checks the access, no helper needed).
#[inline(always)]
fn regs_field(regs: *const u8, offset: usize) -> u64 {
    // SAFETY: `regs` is the tracepoint's `struct pt_regs *` (8-byte aligned); offsets are of its
    // u64 fields.
    #[expect(clippy::cast_ptr_alignment, reason = "offsets of u64 fields of an aligned struct")]
    unsafe {
        core::ptr::read_volatile(regs.add(offset).cast::<u64>())
    }
}

#[tracepoint]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_sys_enter(ctx: TracePointContext) -> u32 {
    let nr: i64 = field(&ctx, SYSCALL_NR_OFFSET);
    // One load per field: the verifier accepts ctx loads at constant offsets only.
    let _ = on_enter(nr, || {
        [
            field(&ctx, ARGS_OFFSET),
            field(&ctx, ARGS_OFFSET + 8),
            field(&ctx, ARGS_OFFSET + 16),
            field(&ctx, ARGS_OFFSET + 24),
            field(&ctx, ARGS_OFFSET + 32),
            field(&ctx, ARGS_OFFSET + 40),
        ]
    });
    0
}

#[tracepoint]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_sys_exit(ctx: TracePointContext) -> u32 {
    let _ = on_exit(field(&ctx, SYSCALL_NR_OFFSET), field(&ctx, ARGS_OFFSET));
    0
}

/// Reads a field of the tracepoint record directly (the verifier allows ctx loads; no helper).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: callers pass offsets of fields inside the raw_syscalls records (tracefs format).
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

#[inline(always)]
fn spec_for(nr: i64) -> Option<(u32, &'static SyscallSpec)> {
    let nr = u32::try_from(nr).ok()?;
    let spec = SYSCALL_SPECS.get(nr)?;
    if spec.op == 0 {
        return None;
    }
    Some((nr, spec))
}

/// The raw arguments padded to `ARG_SLOTS`.
#[inline(always)]
fn padded(args: [u64; SYSCALL_ARGS]) -> Args {
    let [a0, a1, a2, a3, a4, a5] = args;
    [a0, a1, a2, a3, a4, a5, 0, 0]
}

#[inline(always)]
fn arg(args: &Args, index: u8) -> Option<u64> {
    if index == NO_ARG {
        return None;
    }
    // Masked, not compared: see `ARG_SLOTS`. Table indices are below `SYSCALL_ARGS` (asserted in
    // vexevent-common), so the mask never changes one.
    Some(args[usize::from(index) & (ARG_SLOTS - 1)])
}

#[inline(always)]
fn on_enter(nr: i64, read_args: impl Fn() -> [u64; SYSCALL_ARGS]) -> Option<()> {
    let (nr, spec) = spec_for(nr)?;
    count(KernelStat::Seen);
    let config = CONFIG.get(0)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = high(pid_tgid);
    if tgid == config.self_pid {
        count(KernelStat::FilteredSelf);
        return None;
    }
    // A FUSE daemon's /dev/fuse traffic feeds the FUSE request records, whatever the op filter.
    if spec.flags & spec_flags::FUSE_DAEMON_IO != 0 {
        if let Some(connection) = daemon_connection(tgid) {
            let args = padded(read_args());
            if !fd_in_scope(tgid, arg(&args, spec.fd_arg)?) {
                count(KernelStat::FilteredScope);
                if spec.op == OpKind::Write as u32 {
                    // The reply ends the request inside this write: look at it now.
                    let vectored = spec.flags & spec_flags::VECTORED != 0;
                    let _ = daemon_write(connection, vectored, arg(&args, spec.buf_arg)?);
                    return None;
                }
                // The request is in the buffer only once the read returns.
                remember(pid_tgid, nr, DAEMON_READ, args, OpenFd::default());
                return None;
            }
        }
    }
    if config.op_mask & (1u64 << (spec.op & 63)) == 0 {
        count(KernelStat::FilteredOp);
        return None;
    }
    if config.pid_filter_enabled != 0 && PID_FILTER.get_ptr(tgid).is_none() {
        count(KernelStat::FilteredPid);
        return None;
    }
    if config.uid_filter_enabled != 0 && bpf_get_current_uid_gid() as u32 != config.uid_filter {
        count(KernelStat::FilteredUid);
        return None;
    }
    if config.comm_filter_enabled != 0 {
        let comm = bpf_get_current_comm().ok()?;
        if comm != config.comm_filter {
            count(KernelStat::FilteredComm);
            return None;
        }
    }
    let args = padded(read_args());
    if spec.flags & spec_flags::IOCTL != 0
        && arg(&args, spec.cmd_arg).map(|cmd| (cmd >> 8) & 0xff) != Some(u64::from(VEXFS_IOCTL_TYPE))
    {
        count(KernelStat::FilteredOp);
        return None;
    }
    // fd-based operations are decided here, before any work, by the fd's open file (whichever
    // fd, process or fork refers to it). fchdir is decided at exit because leaving the watched
    // tree must clear the cwd scope.
    let mut file = OpenFd::default();
    if let Some(fd) = arg(&args, spec.fd_arg) {
        file = open_fd(tgid, fd);
        if spec.flags & spec_flags::SETS_CWD == 0 && file.flag == NOT_WATCHED {
            // dup2/dup3 onto a watched fd closes it.
            if let Some(new_fd) = arg(&args, spec.new_fd_arg).filter(|new_fd| *new_fd != fd) {
                forget_if_last(&open_fd(tgid, new_fd));
            }
            count(KernelStat::FilteredScope);
            return None;
        }
        if spec.flags & spec_flags::CLOSES_FD != 0 {
            // Forgotten now, not at exit: once close releases the number, another thread's open
            // may get it (and, without BTF offsets, the same key) before this close's exit runs.
            forget_if_last(&file);
        }
    }
    remember(pid_tgid, nr, SYSCALL, args, file);
    Some(())
}

/// `Inflight::active` of a traced syscall, and of a FUSE daemon's read of /dev/fuse.
const SYSCALL: u32 = 1;
const DAEMON_READ: u32 = 2;

/// Keeps a syscall's arguments (and its fd's open file) until its exit.
#[inline(always)]
fn remember(pid_tgid: u64, nr: u32, active: u32, args: Args, file: OpenFd) {
    let inflight = Inflight {
        nr,
        active,
        // SAFETY: no preconditions.
        enter_ns: unsafe { bpf_ktime_get_ns() },
        args,
        file,
    };
    let tid = low(pid_tgid);
    // A thread's slot is reused in place (no map update in the steady state).
    if let Some(slot) = INFLIGHT.get_ptr_mut(tid) {
        // SAFETY: a map value of this thread; only this thread's enter/exit touch it.
        unsafe { *slot = inflight };
    } else if INFLIGHT.insert(tid, inflight, 0).is_err() {
        count(KernelStat::LostInflightFull);
        warn!(&(), "in-flight table full: syscall {} of thread {} not captured", nr, tid);
    }
}

/// Copies a NUL-terminated user string into `dst`; returns its length and record flags.
#[inline(always)]
fn read_user_path(src: u64, dst: &mut [u8; PATH_BUF], truncated: u32, fault: u32) -> (usize, u32) {
    // SAFETY: `dst` is PATH_BUF writable bytes; the helper bounds the copy and faults safely.
    let copied =
        unsafe { bpf_probe_read_user_str(dst.as_mut_ptr().cast(), PATH_BUF as u32, src as *const _) };
    if copied <= 0 {
        count(KernelStat::PathFaults);
        return (0, fault);
    }
    let len = (copied as usize - 1) & (PATH_BUF - 1);
    if copied as usize == PATH_BUF {
        // Filled the buffer: truncated unless the byte the NUL replaced was the NUL.
        let mut last = [0u8; 1];
        // SAFETY: one byte at a user address; the helper faults safely.
        let read = unsafe { bpf_probe_read_user_buf((src + PATH_BUF as u64 - 1) as *const u8, &mut last) };
        if read.is_err() || last[0] != 0 {
            count(KernelStat::PathTruncated);
            return (len, truncated);
        }
    }
    (len, 0)
}

#[inline(always)]
#[expect(clippy::similar_names, reason = "tid and tgid are the kernel's names")]
#[expect(clippy::too_many_lines, reason = "one exit path: read, decide scope, fill, submit")]
fn on_exit(nr: i64, ret: i64) -> Option<()> {
    // Untraced syscalls leave here, before the in-flight lookup.
    let (nr, spec) = spec_for(nr)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = low(pid_tgid);
    let tgid = high(pid_tgid);
    let slot = INFLIGHT.get_ptr_mut(tid)?;
    // SAFETY: this thread's slot; only this thread's enter/exit touch it.
    let inflight = unsafe { *slot };
    if inflight.active == 0 || inflight.nr != nr {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*slot).active = 0 };
    let args = &inflight.args;
    if inflight.active == DAEMON_READ {
        let connection = daemon_connection(tgid)?;
        let vectored = spec.flags & spec_flags::VECTORED != 0;
        return daemon_read(connection, vectored, arg(args, spec.buf_arg)?, ret, pid_tgid);
    }
    // SAFETY: no preconditions.
    let exit_ns = unsafe { bpf_ktime_get_ns() };
    let config = CONFIG.get(0)?;
    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let record: &mut RecordBuf = unsafe { &mut *record };

    let mut flags = 0u32;
    let (paths1, paths2) = record.paths.split_at_mut(PATH_BUF);
    let path1: &mut [u8; PATH_BUF] = paths1.try_into().ok()?;
    let path2: &mut [u8; PATH_BUF] = paths2.try_into().ok()?;
    let mut len1 = 0usize;
    let mut len2 = 0usize;
    if let Some(ptr) = arg(args, spec.path1_arg) {
        let (len, f) = read_user_path(ptr, path1, record_flags::PATH1_TRUNCATED, record_flags::PATH1_FAULT);
        len1 = len;
        flags |= f;
    }
    let has_path2 = spec.path2_arg != NO_ARG;
    if let Some(ptr) = arg(args, spec.path2_arg) {
        let (len, f) = read_user_path(ptr, path2, record_flags::PATH2_TRUNCATED, record_flags::PATH2_FAULT);
        len2 = len;
        flags |= f;
    }
    if flags & (record_flags::PATH1_FAULT | record_flags::PATH2_FAULT) != 0 {
        warn!(&(), "path read fault: syscall {} of pid {} (record flags {:x})", nr, tgid, flags);
    }

    let in_scope = if let Some(fd) = arg(args, spec.fd_arg) {
        // Checked at enter, except for fchdir.
        spec.flags & spec_flags::SETS_CWD == 0 || fd_in_scope(tgid, fd)
    } else if spec.path1_arg == NO_ARG {
        true
    } else {
        path_in_scope(config, tgid, path1, len1, arg(args, spec.dirfd1_arg))
            || (has_path2
                && spec.flags & spec_flags::PATH2_IS_TEXT == 0
                && path_in_scope(config, tgid, path2, len2, arg(args, spec.dirfd2_arg)))
    };
    let fd_value = if !in_scope {
        NOT_WATCHED
    } else if spec.flags & spec_flags::RET_IS_NEW_FD != 0 && is_vexfs_special(path1, len1) {
        VEXFS_SPECIAL
    } else {
        WATCHED
    };
    let (file, file_flags) = update_scope_maps(spec, tgid, &inflight.file, ret, fd_value);
    flags |= file_flags;
    if !in_scope {
        count(KernelStat::FilteredScope);
        return None;
    }
    // Writes to VexFS special files carry their meaning in their data: keep its first bytes.
    let mut payload_len = 0usize;
    if spec.flags & spec_flags::CAPTURES_DATA != 0 && ret > 0 && inflight.file.flag == VEXFS_SPECIAL {
        // The size as a 32-bit value masked right before the call: Linux 6.1's verifier loses
        // the bound of a 64-bit minimum the compiler computes early (and refuses the program).
        let wanted = if ret >= (PATH_BUF - 1) as i64 { (PATH_BUF - 1) as u32 } else { ret as u32 };
        let size = wanted & (PATH_BUF as u32 - 1);
        // SAFETY: the destination is PATH_BUF writable bytes; the helper faults safely.
        let read = unsafe {
            bpf_probe_read_user_raw(
                path2.as_mut_ptr().cast(),
                size,
                arg(args, spec.buf_arg).unwrap_or(0) as *const _,
            )
        };
        if read == 0 {
            payload_len = size as usize;
            flags |= record_flags::PAYLOAD;
        }
    }

    if spec.flags & spec_flags::IOCTL != 0 {
        // SAFETY: the destination is IOCTL_ARG_BYTES writable bytes of the record's syscall body;
        // the helper faults safely.
        let read = unsafe {
            bpf_probe_read_user_raw(
                (&raw mut record.body.syscall.ioctl_arg).cast(),
                IOCTL_ARG_BYTES as u32,
                arg(args, spec.buf_arg).unwrap_or(0) as *const _,
            )
        };
        if read == 0 {
            flags |= record_flags::IOCTL_ARG_VALID;
        }
    }
    record.header = header(spec.op, nr, &Task::current(), inflight.enter_ns, exit_ns, ret);
    record.header.flags = flags;
    record.header.path1_len = len1 as u32;
    record.header.path2_len = if payload_len > 0 { payload_len as u32 } else { len2 as u32 };
    let [a0, a1, mut a2, mut a3, a4, a5, _, _] = *args;
    if spec.flags & spec_flags::OPEN_HOW != 0 {
        // `struct open_how { u64 flags; u64 mode; u64 resolve; }`, copied in by the syscall.
        // SAFETY: a user address; the helper faults safely.
        [a2, a3] = unsafe { bpf_probe_read_user(a2 as *const [u64; 2]) }.unwrap_or([0, 0]);
    }
    record.body.syscall.args = [a0, a1, a2, a3, a4, a5];
    record.body.syscall.file = file;

    let size = if payload_len > 0 {
        RECORD_PATHS_OFFSET + PATH_BUF + (payload_len & (PATH_BUF - 1))
    } else if has_path2 {
        RECORD_PATHS_OFFSET + PATH_BUF + (len2 & (PATH_BUF - 1))
    } else {
        RECORD_PATHS_OFFSET + (len1 & (PATH_BUF - 1))
    };
    submit(record, size);
    Some(())
}

/// Keeps the fd and cwd scope maps in step with what the syscall did; returns the open file the
/// record is about (an open's new file, with its inode, mode and whether the open created it;
/// else the fd argument's) and the record flags that say what it holds.
#[inline(always)]
fn update_scope_maps(
    spec: &SyscallSpec,
    tgid: u32,
    fd_file: &OpenFd,
    ret: i64,
    fd_value: u8,
) -> (OpenFile, u32) {
    let mut file = OpenFile { key: fd_file.key, inode: 0, mode: 0, padding: 0 };
    if ret < 0 {
        return (file, 0);
    }
    let mut flags = 0;
    if spec.flags & spec_flags::RET_IS_NEW_FD != 0 {
        if let Some(new) = locate_fd(tgid, ret as u64) {
            let inode = file_inode(new.file);
            mark_file(&new, inode, fd_value);
            file.key = new.key;
            if let Some((ino, mode, created)) = describe(new.file, inode) {
                file.inode = ino;
                file.mode = mode;
                flags = record_flags::FILE_INFO | if created { record_flags::FILE_CREATED } else { 0 };
            }
        }
    } else if spec.flags & spec_flags::DUPLICATES_FD != 0 && fd_file.file == 0 {
        // Keyed by (tgid, fd) (no BTF offsets): the duplicate is what the original is. Keyed by
        // the open file, it already is.
        if let Some(new) = locate_fd(tgid, ret as u64) {
            mark_file(&new, 0, fd_file.flag);
        }
    } else if spec.flags & spec_flags::SETS_CWD != 0 {
        mark_cwd(tgid, fd_value != NOT_WATCHED);
    }
    (file, flags)
}

/// A new open file's inode number, mode, and whether the open created it (`FMODE_CREATED`), so
/// userspace need not `lstat` the path (after the fact, racing with later changes).
#[inline(always)]
fn describe(file: u64, inode: u64) -> Option<(u64, u32, bool)> {
    let layout = FILE_LAYOUT.get(0)?;
    if file == 0 || inode == 0 {
        return None;
    }
    // SAFETY (the three reads): kernel addresses read through the helper, which faults safely;
    // the offsets are the running kernel's (from its BTF).
    let f_mode: u32 =
        unsafe { bpf_probe_read_kernel((file + u64::from(layout.file_mode)) as *const u32) }.ok()?;
    let ino: u64 =
        unsafe { bpf_probe_read_kernel((inode + u64::from(layout.inode_ino)) as *const u64) }.ok()?;
    let mode: u16 =
        unsafe { bpf_probe_read_kernel((inode + u64::from(layout.inode_mode)) as *const u16) }.ok()?;
    Some((ino, u32::from(mode), f_mode & FMODE_CREATED != 0))
}
