//! `sched/sched_process_fork`: a child inherits its parent's cwd, so it inherits its cwd scope.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use vexevent_common::{KernelStat, OpKind, RECORD_HEADER_SIZE};

use crate::{
    maps::{CONFIG, SCRATCH, count},
    ring::submit,
    scope::{cwd_in_scope, mark_cwd},
};

#[tracepoint]
pub fn vexevent_process_fork(ctx: TracePointContext) -> u32 {
    let _ = on_fork(&ctx);
    0
}

fn on_fork(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !cwd_in_scope(tgid) {
        return None;
    }
    let config = CONFIG.get(0)?;
    // SAFETY: the loader read this offset of `child_pid` from the tracepoint's format file.
    let child: i32 = unsafe { ctx.read_at(config.fork_child_pid_offset as usize) }.ok()?;
    mark_cwd(child as u32, true);
    // Counted as seen too, so that seen = filtered + emitted + lost (+ syscalls still in flight).
    count(KernelStat::Seen);
    count(KernelStat::ForksInherited);

    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let header = unsafe { &mut (*record).header };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    header.enter_ns = now;
    header.exit_ns = now;
    header.ret = i64::from(child);
    header.args = [0; 6];
    header.pid = tgid;
    header.tid = (pid_tgid & 0xffff_ffff) as u32;
    header.uid = 0;
    header.gid = 0;
    header.syscall_nr = u32::MAX;
    header.op = OpKind::Fork as u32;
    header.flags = 0;
    header.path1_len = 0;
    header.path2_len = 0;
    header.comm = bpf_get_current_comm().unwrap_or_default();
    // SAFETY: as above.
    submit(unsafe { &mut *record }, RECORD_HEADER_SIZE);
    Some(())
}
