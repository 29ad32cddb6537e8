//! Uprobes on FUSE daemon functions named in the configuration (the daemon's vector search, say):
//! the time a daemon thread spends in them is added to the request that thread is serving (the
//! one it read last from /dev/fuse), so it shows inside the request's daemon time.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::maps::{DAEMON_FN_START, DAEMON_SERVING, FUSE_INFLIGHT};

fn current_tid() -> u32 {
    (bpf_get_current_pid_tgid() & 0xffff_ffff) as u32
}

#[uprobe]
pub fn vexevent_daemon_fn_entry(_ctx: ProbeContext) -> u32 {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // Nested calls keep the outermost start.
    if DAEMON_FN_START.get_ptr(current_tid()).is_none() {
        let _ = DAEMON_FN_START.insert(current_tid(), now, 0);
    }
    0
}

#[uretprobe]
pub fn vexevent_daemon_fn_return(_ctx: RetProbeContext) -> u32 {
    let _ = on_return();
    0
}

fn on_return() -> Option<()> {
    let tid = current_tid();
    // SAFETY: a plain value read before the entry is removed.
    let start = unsafe { *DAEMON_FN_START.get_ptr(tid)? };
    let _ = DAEMON_FN_START.remove(tid);
    // SAFETY: no preconditions.
    let elapsed = unsafe { bpf_ktime_get_ns() }.saturating_sub(start);
    // SAFETY: a plain value read.
    let key = unsafe { *DAEMON_SERVING.get_ptr(tid)? };
    let request = FUSE_INFLIGHT.get_ptr_mut(key)?;
    // SAFETY: the entry of the request this thread is serving.
    unsafe {
        (*request).daemon.functions_ns += elapsed;
        (*request).daemon.function_calls += 1;
    }
    Some(())
}
