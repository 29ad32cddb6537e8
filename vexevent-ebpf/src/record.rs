//! Filling a record's header: one helper for every probe (syscalls, fork, FUSE, gaps), so the
//! kinds differ only in their bodies. `submit` stamps the CPU and sequence number.

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
};
use vexevent_common::{COMM_LEN, RecordHeader};

/// The task a record is about.
pub struct Task {
    /// `(tgid << 32) | tid`.
    pub pid_tgid: u64,
    /// `(gid << 32) | uid`.
    pub uid_gid: u64,
    pub comm: [u8; COMM_LEN],
    /// Its cgroup id (0: unknown).
    pub cgroup_id: u64,
}

impl Task {
    /// No task (gap records).
    pub const NONE: Task = Task { pid_tgid: 0, uid_gid: 0, comm: [0; COMM_LEN], cgroup_id: 0 };

    /// The task the probe runs in.
    #[inline(always)]
    pub fn current() -> Task {
        Task {
            pid_tgid: bpf_get_current_pid_tgid(),
            uid_gid: bpf_get_current_uid_gid(),
            comm: bpf_get_current_comm().unwrap_or_default(),
            // SAFETY: no preconditions (tracing programs, Linux 4.18 and later).
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        }
    }
}

/// The high half of a packed id pair (`tgid` of `pid_tgid`, `gid` of `uid_gid`).
#[inline(always)]
pub const fn high(pair: u64) -> u32 {
    (pair >> 32) as u32
}

/// The low half (`tid`, `uid`).
#[inline(always)]
pub const fn low(pair: u64) -> u32 {
    pair as u32
}

/// A header for a record of kind `op` about `task`; flags and path lengths start at zero, the
/// CPU and sequence number are stamped by `submit`.
#[inline(always)]
pub fn header(op: u32, syscall_nr: u32, task: &Task, enter_ns: u64, exit_ns: u64, ret: i64) -> RecordHeader {
    RecordHeader {
        seq: 0,
        enter_ns,
        exit_ns,
        ret,
        pid: high(task.pid_tgid),
        tid: low(task.pid_tgid),
        uid: low(task.uid_gid),
        gid: high(task.uid_gid),
        syscall_nr,
        op,
        flags: 0,
        cpu: 0,
        path1_len: 0,
        path2_len: 0,
        comm: task.comm,
        cgroup_id: task.cgroup_id,
    }
}
