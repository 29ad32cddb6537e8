//! `sched/sched_process_fork`: a child inherits its parent's cwd, so it inherits its cwd scope.
//! `sched/sched_process_exit`: an exiting thread's in-flight slot, and an exiting process's cwd
//! scope, leave their tables (which are not LRU maps, so nothing else would free them).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::info;
use vexevent_common::{ForkBody, KernelStat, NOT_A_SYSCALL, OpKind, RECORD_PATHS_OFFSET};

use crate::{
    maps::{CONFIG, CWD_SCOPE, INFLIGHT, SCRATCH, count},
    record::{Task, header, high, low},
    ring::submit,
    scope::{cwd_in_scope, mark_cwd},
};

#[tracepoint]
#[expect(clippy::needless_pass_by_value, reason = "aya-ebpf's program macros pass the context by value")]
pub fn vexevent_process_fork(ctx: TracePointContext) -> u32 {
    let _ = on_fork(&ctx);
    0
}

fn on_fork(ctx: &TracePointContext) -> Option<()> {
    let task = Task::current();
    let tgid = high(task.pid_tgid);
    if !cwd_in_scope(tgid) {
        return None;
    }
    let config = CONFIG.get(0)?;
    // SAFETY: the loader read this offset of `child_pid` from the tracepoint's format file.
    let child: i32 = unsafe { ctx.read_at(config.fork_child_pid_offset as usize) }.ok()?;
    let child = child.cast_unsigned();
    mark_cwd(child, true);
    info!(ctx, "fork: pid {} inherits the watched cwd of pid {}", child, tgid);
    // Counted as seen too, so that seen = filtered + emitted + lost (+ syscalls still in flight).
    count(KernelStat::Seen);
    count(KernelStat::ForksInherited);

    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let record = unsafe { &mut *record };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    record.header = header(OpKind::Fork as u32, NOT_A_SYSCALL, &task, now, now, 0);
    record.body.fork = ForkBody { child_pid: child, padding: 0 };
    submit(record, RECORD_PATHS_OFFSET);
    Some(())
}

#[tracepoint]
pub fn vexevent_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = INFLIGHT.remove(low(pid_tgid));
    // The leader's exit: the cwd scope is the process's. (A leader that exits before its other
    // threads takes the scope with it: their relative paths are then resolved as unwatched.)
    if low(pid_tgid) == high(pid_tgid) {
        let _ = CWD_SCOPE.remove(high(pid_tgid));
    }
    0
}
