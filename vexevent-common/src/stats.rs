//! Indices of the kernel-side counters in the per-CPU `STATS` array, and their names.

crate::counted_enum! {
    /// One kernel counter: where in `STATS` it lives and what it is called in stats output.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum KernelStat {
        /// Entries into a traced syscall (before any filter), plus forks of watched processes.
        Seen = 0,
        /// Dropped in the kernel: the caller is vexevent itself.
        FilteredSelf,
        /// Dropped in the kernel: operation type not selected.
        FilteredOp,
        /// Dropped in the kernel: pid not in the pid filter.
        FilteredPid,
        /// Dropped in the kernel: uid filter.
        FilteredUid,
        /// Dropped in the kernel: comm filter.
        FilteredComm,
        /// Dropped in the kernel: path or fd outside the watched directories.
        FilteredScope,
        /// Records written to the ring buffer.
        Emitted,
        /// Lost: the ring buffer was full.
        LostRingFull,
        /// Lost: the in-flight table was full at syscall enter.
        LostInflightFull,
        /// Records that carry a path read fault (the record is still emitted, flagged).
        PathFaults,
        /// Records that carry a truncated path (still emitted, flagged).
        PathTruncated,
        /// `sched_process_fork` of a process whose cwd is in scope (scope inherited).
        ForksInherited,
        /// FUSE requests queued on a watched connection.
        FuseRequests,
        /// FUSE requests on connections that are not watched.
        FuseFilteredConnection,
        /// FUSE request ends without a matching send (queued before vexevent started).
        FuseUnmatchedEnd,
        /// FUSE requests whose reading by the daemon was seen (/dev/fuse reads).
        FuseDaemonReads,
        /// FUSE replies whose writing by the daemon was seen (/dev/fuse writes).
        FuseDaemonReplies,
        /// FUSE kprobes (kernels without the FUSE tracepoints) that could not read a `fuse_req`
        /// field: the request is not captured.
        FuseReadFaults,
        /// Tracepoint and kernel function records over their source's rate cap (not emitted).
        KernelRateLimited,
        /// Kernel function probes that could not read an argument's struct field (the record
        /// is still emitted, flagged).
        KernelReadFaults,
        /// Timed kernel function calls whose entry could not be remembered (table full).
        KernelCallsInflightFull,
        /// A watched open file or cwd could not be recorded, its scope table being full: the
        /// operations through it are not captured.
        ScopeFull,
    }
}

/// Number of counters; the size of the `STATS` array.
#[expect(clippy::cast_possible_truncation, reason = "a few dozen counters")]
pub const KERNEL_STAT_COUNT: u32 = KernelStat::ALL.len() as u32;

// Counter values are their indices in `ALL` (and in `STATS`).
const _: () = {
    let mut i = 0;
    while i < KernelStat::ALL.len() {
        assert!(KernelStat::ALL[i] as usize == i);
        i += 1;
    }
};

impl KernelStat {
    /// Name used in stats output and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            KernelStat::Seen => "seen",
            KernelStat::FilteredSelf => "filtered_self",
            KernelStat::FilteredOp => "filtered_op",
            KernelStat::FilteredPid => "filtered_pid",
            KernelStat::FilteredUid => "filtered_uid",
            KernelStat::FilteredComm => "filtered_comm",
            KernelStat::FilteredScope => "filtered_scope",
            KernelStat::Emitted => "emitted",
            KernelStat::LostRingFull => "lost_ring_full",
            KernelStat::LostInflightFull => "lost_inflight_full",
            KernelStat::PathFaults => "path_faults",
            KernelStat::PathTruncated => "path_truncated",
            KernelStat::ForksInherited => "forks_inherited",
            KernelStat::FuseRequests => "fuse_requests",
            KernelStat::FuseFilteredConnection => "filtered_fuse_connection",
            KernelStat::FuseUnmatchedEnd => "fuse_unmatched_end",
            KernelStat::FuseDaemonReads => "fuse_daemon_reads",
            KernelStat::FuseDaemonReplies => "fuse_daemon_replies",
            KernelStat::FuseReadFaults => "fuse_read_faults",
            KernelStat::KernelRateLimited => "filtered_kernel_rate",
            KernelStat::KernelReadFaults => "kernel_read_faults",
            KernelStat::KernelCallsInflightFull => "kernel_calls_inflight_full",
            KernelStat::ScopeFull => "scope_full",
        }
    }
}
