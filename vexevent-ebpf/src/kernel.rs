//! Tracepoints and kernel functions attached by name. Eight copies of one tracepoint program
//! serve up to eight configured tracepoints, each reading its slot's spec and copying the
//! configured fields (offsets from tracefs `format` files). One kprobe/kretprobe pair
//! serves every configured function, and eight fentry/fexit pairs (one target each: the kernel
//! binds a tracing program to its function at load) serve vmlinux functions where the kernel
//! allows them; each finds its spec by the probed address (`bpf_get_func_ip`) and copies the
//! configured arguments, following `struct dentry`, `file`,
//! `path`, `inode` and `renamedata` at offsets the loader read from BTF (`KERNEL_LAYOUT`). A
//! timed function's record is built at entry, kept per (thread, function) and submitted at
//! return with its duration and return value. Same filters (self, pid, uid, comm) and loss
//! accounting as the syscall probes, plus a per-CPU rate cap per source.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated,
    },
    macros::{fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext},
};
use vexevent_common::{
    KERNEL_ARGS, KERNEL_NAME_BYTES, KERNEL_PATH_DEPTH, KERNEL_RECORD_MAX, KERNEL_TEXT_BYTES, KERNEL_TEXTS,
    KERNEL_VALUES, KernelBody, KernelCallBuf, KernelCallKey, KernelField, KernelLayout, KernelSpec,
    KernelStat, MAX_FENTRY_SLOTS, MAX_TRACEPOINTS, NOT_A_SYSCALL, OpKind, RECORD_PATHS_OFFSET, RecordBuf,
    field_kind, kernel_flags, spec_kernel,
};

use crate::{
    maps::{
        CONFIG, FUNCTION_SPECS, INFLIGHT, KERNEL_CALLS, KERNEL_LAYOUT, KERNEL_RATE, PID_FILTER, SCRATCH,
        TRACEPOINT_SPECS, count,
    },
    record::{Task, header, high, low},
    ring::submit,
};

/// Bytes of `endbr64`: with IBT a kprobe on a function's first byte sits after it, and
/// `bpf_get_func_ip` reports that address.
const ENDBR_BYTES: u64 = 4;
/// A rate window.
const SECOND_NS: u64 = 1_000_000_000;

/// One tracepoint program per slot: a program cannot tell which tracepoint fired (the record's
/// `common_*` fields are overwritten with a `pt_regs` pointer before the program runs, and aya
/// 0.14 attaches tracepoints without a cookie), so slot `n`'s program reads `TRACEPOINT_SPECS[n]`.
macro_rules! tracepoint_slots {
    ($($name:ident = $slot:literal,)*) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            let _ = on_tracepoint(&ctx, $slot);
            0
        }
    )*};
}

tracepoint_slots! {
    vexevent_tracepoint_0 = 0,
    vexevent_tracepoint_1 = 1,
    vexevent_tracepoint_2 = 2,
    vexevent_tracepoint_3 = 3,
    vexevent_tracepoint_4 = 4,
    vexevent_tracepoint_5 = 5,
    vexevent_tracepoint_6 = 6,
    vexevent_tracepoint_7 = 7,
}

const _: () = assert!(MAX_TRACEPOINTS == 8);

#[kprobe]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_function_entry(ctx: ProbeContext) -> u32 {
    // SAFETY: a kprobe context, which the helper accepts (Linux 5.15+).
    let ip = unsafe { generated::bpf_get_func_ip(ctx.as_ptr()) };
    // One load per argument at a constant position: the verifier refuses a context read at an
    // offset chosen at run time.
    let args: [u64; 8] = [
        ctx.arg(0).unwrap_or(0),
        ctx.arg(1).unwrap_or(0),
        ctx.arg(2).unwrap_or(0),
        ctx.arg(3).unwrap_or(0),
        ctx.arg(4).unwrap_or(0),
        ctx.arg(5).unwrap_or(0),
        0,
        0,
    ];
    let _ = on_entry(ip, &args);
    0
}

#[kretprobe]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_function_return(ctx: RetProbeContext) -> u32 {
    // SAFETY: a kretprobe context, which the helper accepts (Linux 5.15+).
    let ip = unsafe { generated::bpf_get_func_ip(ctx.as_ptr()) };
    let _ = on_return(ip, ctx.ret::<i64>());
    0
}

/// fentry/fexit pairs, one target function each. A slot's programs serve whichever function
/// the loader bound them to: the spec is found by address, as for the kprobe pair. Arguments
/// and the return value come through `bpf_get_func_arg`/`bpf_get_func_ret` (Linux 5.17+), which
/// answer for any argument count (a direct context read past the target's last argument is
/// refused at load).
macro_rules! fentry_slots {
    ($($entry:ident, $exit:ident;)*) => {$(
        #[fentry]
        pub fn $entry(ctx: FEntryContext) -> u32 {
            let _ = on_fentry(&ctx);
            0
        }

        #[fexit]
        pub fn $exit(ctx: FExitContext) -> u32 {
            let _ = on_fexit(&ctx);
            0
        }
    )*};
}

fentry_slots! {
    vexevent_fentry_0, vexevent_fexit_0;
    vexevent_fentry_1, vexevent_fexit_1;
    vexevent_fentry_2, vexevent_fexit_2;
    vexevent_fentry_3, vexevent_fexit_3;
    vexevent_fentry_4, vexevent_fexit_4;
    vexevent_fentry_5, vexevent_fexit_5;
    vexevent_fentry_6, vexevent_fexit_6;
    vexevent_fentry_7, vexevent_fexit_7;
}

const _: () = assert!(MAX_FENTRY_SLOTS == 8);

#[inline(always)]
fn on_fentry(ctx: &FEntryContext) -> Option<()> {
    // SAFETY: a tracing context, which the helper accepts (Linux 5.15+).
    let ip = unsafe { generated::bpf_get_func_ip(ctx.as_ptr()) };
    let mut args = [0u64; 8];
    for (n, arg) in args.iter_mut().enumerate().take(6) {
        // SAFETY: a tracing context and a stack slot; an argument the function lacks is refused
        // (the slot stays 0).
        let _ = unsafe { generated::bpf_get_func_arg(ctx.as_ptr(), n as u32, core::ptr::from_mut(arg)) };
    }
    on_entry(ip, &args)
}

#[inline(always)]
fn on_fexit(ctx: &FExitContext) -> Option<()> {
    // SAFETY: a tracing context, which the helper accepts (Linux 5.15+).
    let ip = unsafe { generated::bpf_get_func_ip(ctx.as_ptr()) };
    let mut ret = 0u64;
    // SAFETY: an fexit context and a stack slot.
    let _ = unsafe { generated::bpf_get_func_ret(ctx.as_ptr(), core::ptr::from_mut(&mut ret)) };
    on_return(ip, ret.cast_signed())
}

/// The filters every source goes through: self, pid, uid, comm, then the source's rate cap.
/// Counts the record as seen, and why it was dropped.
#[inline(always)]
fn admit(spec: &KernelSpec, now: u64) -> Option<Task> {
    count(KernelStat::Seen);
    let config = CONFIG.get(0)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = high(pid_tgid);
    if tgid == config.self_pid {
        count(KernelStat::FilteredSelf);
        return None;
    }
    if config.pid_filter_enabled != 0 && PID_FILTER.get_ptr(tgid).is_none() {
        count(KernelStat::FilteredPid);
        return None;
    }
    let uid_gid = bpf_get_current_uid_gid();
    if config.uid_filter_enabled != 0 && low(uid_gid) != config.uid_filter {
        count(KernelStat::FilteredUid);
        return None;
    }
    let comm = bpf_get_current_comm().unwrap_or_default();
    if config.comm_filter_enabled != 0 && comm != config.comm_filter {
        count(KernelStat::FilteredComm);
        return None;
    }
    if !under_rate(spec, now) {
        count(KernelStat::KernelRateLimited);
        return None;
    }
    // SAFETY: no preconditions.
    let cgroup_id = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    Some(Task { pid_tgid, uid_gid, comm, cgroup_id })
}

/// Whether this CPU may emit one more record of the source this second.
#[inline(always)]
fn under_rate(spec: &KernelSpec, now: u64) -> bool {
    if spec.rate_per_sec == 0 {
        return true;
    }
    let Some(rate) = KERNEL_RATE.get_ptr_mut(spec.source) else { return true };
    // SAFETY: this CPU's slot; probes run with preemption disabled.
    let rate = unsafe { &mut *rate };
    if now.wrapping_sub(rate.window_ns) >= SECOND_NS {
        rate.window_ns = now;
        rate.count = 0;
    }
    if rate.count >= u64::from(spec.rate_per_sec) {
        return false;
    }
    rate.count += 1;
    true
}

/// A record of kind `op` in this CPU's scratch space, body zeroed but for the source.
#[inline(always)]
fn start_record(op: OpKind, task: &Task, spec: &KernelSpec, now: u64) -> Option<&'static mut RecordBuf> {
    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let record = unsafe { &mut *record };
    record.header = header(op as u32, NOT_A_SYSCALL, task, now, now, 0);
    record.body.kernel = KernelBody { source: spec.source, ..KernelBody::default() };
    Some(record)
}

/// The body of a record started by `start_record`.
#[inline(always)]
fn body(record: &mut RecordBuf) -> &mut KernelBody {
    // SAFETY: `start_record` wrote the kernel variant; every variant is plain integers.
    unsafe { &mut record.body.kernel }
}

/// Where text slot `slot` starts in the record.
#[inline(always)]
fn text_slot(record: &mut RecordBuf, slot: usize) -> *mut u8 {
    // SAFETY: both slots lie inside the record's path area (2 * KERNEL_TEXT_BYTES <= 2 * PATH_BUF).
    unsafe { record.paths.as_mut_ptr().add((slot & 1) * KERNEL_TEXT_BYTES) }
}

/// Copies a NUL-terminated kernel string of at most `max` bytes (with the NUL) to `dest`;
/// returns its length without the NUL.
#[inline(always)]
fn copy_str(dest: *mut u8, max: u32, src: u64) -> Option<u32> {
    // SAFETY: `dest` has at least `max` bytes of map value (callers bound `max`); the helper
    // faults safely on `src`.
    let copied = unsafe { generated::bpf_probe_read_kernel_str(dest.cast(), max, src as *const _) };
    (copied > 0).then(|| (copied - 1) as u32)
}

/// Sets a text slot's length in the header.
#[inline(always)]
fn set_text_len(record: &mut RecordBuf, slot: usize, len: u32) {
    if slot == 0 {
        record.header.path1_len = len;
    } else {
        record.header.path2_len = len;
    }
}

/// Bytes of a kernel record with the header's text lengths.
#[inline(always)]
fn record_size(record: &RecordBuf) -> usize {
    let mask = KERNEL_TEXT_BYTES - 1;
    if record.header.path2_len > 0 {
        RECORD_PATHS_OFFSET + KERNEL_TEXT_BYTES + (record.header.path2_len as usize & mask)
    } else {
        RECORD_PATHS_OFFSET + (record.header.path1_len as usize & mask)
    }
}

fn on_tracepoint(ctx: &TracePointContext, slot: u32) -> Option<()> {
    let spec = TRACEPOINT_SPECS.get(slot)?;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let task = admit(spec, now)?;
    let record = start_record(OpKind::Tracepoint, &task, spec, now)?;
    for i in 0..KERNEL_VALUES {
        let value = tracepoint_int(ctx, &spec.values[i]);
        body(record).values[i] = value;
    }
    for slot in 0..KERNEL_TEXTS {
        let field = spec.texts[slot];
        let start = ctx.as_ptr() as u64;
        let (src, max) = match field.kind {
            field_kind::DATA_LOC_STR => {
                // SAFETY: the loader read this field's offset from the format file.
                let loc: u32 = unsafe { ctx.read_at(usize::from(field.offset)) }.ok()?;
                (start + u64::from(loc & 0xffff), KERNEL_TEXT_BYTES as u32)
            }
            // At most `size` bytes with the NUL (a u8: below KERNEL_TEXT_BYTES).
            field_kind::CHAR_ARRAY => (start + u64::from(field.offset), u32::from(field.size)),
            _ => continue,
        };
        let dest = text_slot(record, slot);
        let len = copy_str(dest, max, src).unwrap_or(0);
        set_text_len(record, slot, len);
    }
    let size = record_size(record);
    submit(record, size);
    Some(())
}

/// An integer field of a tracepoint record, zero-extended (0 for an unused slot).
#[inline(always)]
fn tracepoint_int(ctx: &TracePointContext, field: &KernelField) -> u64 {
    if field.kind != field_kind::INT {
        return 0;
    }
    let offset = usize::from(field.offset);
    // SAFETY (each read): the loader read this field's offset and size from the format file.
    let value = unsafe {
        match field.size {
            1 => ctx.read_at::<u8>(offset).map(u64::from),
            2 => ctx.read_at::<u16>(offset).map(u64::from),
            4 => ctx.read_at::<u32>(offset).map(u64::from),
            _ => ctx.read_at::<u64>(offset),
        }
    };
    value.unwrap_or(0)
}

/// The spec of the function probed at `ip` (the address itself, or just before its `endbr64`).
#[inline(always)]
fn function_spec(ip: u64) -> Option<(&'static KernelSpec, u64)> {
    let spec = FUNCTION_SPECS.get_ptr(ip).or_else(|| FUNCTION_SPECS.get_ptr(ip - ENDBR_BYTES))?;
    // SAFETY: a map value; the loader writes specs before attaching.
    Some((unsafe { &*spec }, ip))
}

/// A kernel value at `base + offset`; a fault is counted and flagged on the record.
#[inline(always)]
fn kernel<T>(record: &mut RecordBuf, base: u64, offset: u32) -> Option<T> {
    // SAFETY: kernel memory read through the helper, which faults safely.
    let value = unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) };
    if value.is_err() {
        count(KernelStat::KernelReadFaults);
        body(record).flags |= kernel_flags::READ_FAULT;
    }
    value.ok()
}

/// A call of the function at `ip` with `args`: its record, submitted now or at return.
fn on_entry(ip: u64, args: &[u64; 8]) -> Option<()> {
    let (spec, ip) = function_spec(ip)?;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let task = admit(spec, now)?;
    let record = start_record(OpKind::KernelFunction, &task, spec, now)?;
    for i in 0..KERNEL_VALUES {
        let field = spec.values[i];
        if field.kind == field_kind::INT {
            body(record).values[i] = args[usize::from(field.offset) & 7];
        }
    }
    let layout = KERNEL_LAYOUT.get(0)?;
    for slot in 0..KERNEL_TEXTS {
        let field = spec.texts[slot];
        let arg = args[usize::from(field.offset) & 7];
        let _ = function_text(record, layout, slot, field.kind, arg);
    }
    if let Some(inflight) = INFLIGHT.get_ptr(low(task.pid_tgid)) {
        // SAFETY: the syscall probes' entry for this thread; only this thread writes it.
        let inflight = unsafe { &*inflight };
        if inflight.active != 0 {
            let body = body(record);
            body.flags |= kernel_flags::IN_SYSCALL;
            body.syscall_nr = inflight.nr;
            body.syscall_enter_ns = inflight.enter_ns;
        }
    }
    if spec.flags & spec_kernel::TIMED == 0 {
        let size = record_size(record);
        submit(record, size);
        return Some(());
    }
    let key = KernelCallKey { tid: task.pid_tgid, ip };
    // SAFETY: the scratch record is at least KERNEL_RECORD_MAX bytes, 8-byte aligned.
    let call = unsafe { &*core::ptr::from_ref(record).cast::<KernelCallBuf>() };
    #[expect(clippy::needless_borrows_for_generic_args, reason = "a copy would not fit the eBPF stack")]
    let remembered = KERNEL_CALLS.insert(&key, call, 0);
    if remembered.is_err() {
        count(KernelStat::KernelCallsInflightFull);
    }
    Some(())
}

/// Fills text slot `slot` from argument `arg` read as `kind`.
#[inline(always)]
fn function_text(
    record: &mut RecordBuf,
    layout: &KernelLayout,
    slot: usize,
    kind: u8,
    arg: u64,
) -> Option<()> {
    let dentry: u64 = match kind {
        field_kind::STR => {
            let len = copy_str(text_slot(record, slot), KERNEL_TEXT_BYTES as u32, arg).unwrap_or(0);
            set_text_len(record, slot, len);
            return Some(());
        }
        field_kind::INODE => {
            let ino: u64 = kernel(record, arg, layout.inode_ino)?;
            body(record).inos[slot & 1] = ino;
            let sb: u64 = kernel(record, arg, layout.inode_sb)?;
            let dev: u32 = kernel(record, sb, layout.sb_dev)?;
            body(record).devs[slot & 1] = dev;
            return Some(());
        }
        field_kind::DENTRY => arg,
        field_kind::FILE => kernel(record, arg, layout.file_dentry)?,
        field_kind::PATH => kernel(record, arg, layout.path_dentry)?,
        field_kind::RENAME_OLD => kernel(record, arg, layout.rename_old_dentry)?,
        field_kind::RENAME_NEW => kernel(record, arg, layout.rename_new_dentry)?,
        _ => return None,
    };
    let sb: u64 = kernel(record, dentry, layout.dentry_sb)?;
    let dev: u32 = kernel(record, sb, layout.sb_dev)?;
    body(record).devs[slot & 1] = dev;
    let inode: u64 = kernel(record, dentry, layout.dentry_inode)?;
    // A negative dentry (the name of a file not created yet, or just removed) has no inode.
    if inode != 0 {
        let ino: u64 = kernel(record, inode, layout.inode_ino)?;
        body(record).inos[slot & 1] = ino;
    }
    walk(record, layout, slot, dentry)
}

/// Copies the names from `dentry` up to its file system's root into text slot `slot`, leaf
/// first, each NUL-terminated (userspace reverses them into a path).
#[inline(always)]
fn walk(record: &mut RecordBuf, layout: &KernelLayout, slot: usize, dentry: u64) -> Option<()> {
    let mut at = 0usize;
    let mut current = dentry;
    let mut reached_root = false;
    for _ in 0..KERNEL_PATH_DEPTH {
        if at >= KERNEL_TEXT_BYTES - KERNEL_NAME_BYTES {
            break;
        }
        let parent: u64 = kernel(record, current, layout.dentry_parent)?;
        if parent == current {
            reached_root = true;
            break;
        }
        let name: u64 = kernel(record, current, layout.dentry_name)?;
        // SAFETY: `at` is below KERNEL_TEXT_BYTES - KERNEL_NAME_BYTES, so the name fits the slot.
        let dest = unsafe { text_slot(record, slot).add(at & (KERNEL_TEXT_BYTES - 1)) };
        let Some(len) = copy_str(dest, KERNEL_NAME_BYTES as u32, name) else {
            body(record).flags |= kernel_flags::READ_FAULT;
            break;
        };
        at += len as usize + 1;
        current = parent;
    }
    if !reached_root {
        body(record).flags |=
            if slot == 0 { kernel_flags::TEXT1_TRUNCATED } else { kernel_flags::TEXT2_TRUNCATED };
    }
    set_text_len(record, slot, at as u32);
    Some(())
}

/// The return of the function at `ip` with `ret`: the record kept at entry, submitted.
fn on_return(ip: u64, ret: i64) -> Option<()> {
    let key = KernelCallKey { tid: bpf_get_current_pid_tgid(), ip };
    let call = KERNEL_CALLS.get_ptr(key)?;
    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let record = unsafe { &mut *record };
    // SAFETY: the call buffer holds KERNEL_RECORD_MAX bytes, the scratch record more.
    let copied = unsafe {
        let dest =
            core::slice::from_raw_parts_mut(core::ptr::from_mut(record).cast::<u8>(), KERNEL_RECORD_MAX);
        aya_ebpf::helpers::bpf_probe_read_kernel_buf(call.cast::<u8>(), dest)
    };
    let _ = KERNEL_CALLS.remove(key);
    copied.ok()?;
    // SAFETY: no preconditions.
    record.header.exit_ns = unsafe { bpf_ktime_get_ns() };
    record.header.ret = ret;
    body(record).flags |= kernel_flags::RETURNED;
    let size = record_size(record);
    submit(record, size);
    Some(())
}

// The function probes read at most `KERNEL_ARGS` arguments (the masked index above has 8 slots).
const _: () = assert!(KERNEL_ARGS <= 8);
