//! The kernel/userspace contract of vexevent: fixed-size `#[repr(C)]` records, operation kinds,
//! the syscall table and FUSE opcodes both sides share, map names and statistics indices. Boring
//! on purpose.
#![no_std]

/// Declares a fieldless `#[repr(u32)]` enum and its `ALL` array (every variant, in declaration
/// order) from one list, so a new variant cannot be left out of `ALL` or of the counts derived
/// from `ALL.len()`.
macro_rules! counted_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident $(= $value:literal)?,)+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        $vis enum $name {
            $($(#[$variant_meta])* $variant $(= $value)?,)+
        }

        impl $name {
            /// Every variant, in declaration (and value) order.
            pub const ALL: [$name; [$($name::$variant),+].len()] = [$($name::$variant),+];
        }
    };
}
pub(crate) use counted_enum;

pub mod fuse;
pub mod kernel;
pub mod record;
pub mod stats;
pub mod syscalls;

pub use fuse::*;
pub use kernel::*;
pub use record::*;
pub use stats::*;
pub use syscalls::*;

/// Names of the maps in the eBPF object, so the loader and the programs cannot disagree.
pub mod map_names {
    /// Ring buffers, one per shard.
    pub const EVENTS: [&str; crate::MAX_SHARDS] =
        ["EVENTS_0", "EVENTS_1", "EVENTS_2", "EVENTS_3", "EVENTS_4", "EVENTS_5", "EVENTS_6", "EVENTS_7"];
    /// Per-CPU records lost and not yet reported in a gap record.
    pub const PENDING_LOSS: &str = "PENDING_LOSS";
    /// Non-zero while the consumer drains the rings on its own timer (the probes then do not wake
    /// it; see `CONSUMER_POLLING` in the eBPF crate).
    pub const CONSUMER_POLLING: &str = "CONSUMER_POLLING";
    /// Per-CPU records lost, by `OpKind` value (cumulative).
    pub const LOST_BY_KIND: &str = "LOST_BY_KIND";
    pub const SYSCALL_SPECS: &str = "SYSCALL_SPECS";
    pub const CONFIG: &str = "CONFIG";
    pub const WATCH_PREFIXES: &str = "WATCH_PREFIXES";
    pub const FD_SCOPE: &str = "FD_SCOPE";
    /// Fds open on watched files when the run started, `(tgid << 32) | fd`.
    pub const SEEDED_FDS: &str = "SEEDED_FDS";
    /// Where the kernel keeps an fd's open file (offsets from BTF).
    pub const FILE_LAYOUT: &str = "FILE_LAYOUT";
    pub const CWD_SCOPE: &str = "CWD_SCOPE";
    pub const PID_FILTER: &str = "PID_FILTER";
    pub const STATS: &str = "STATS";
    pub const FUSE_CONFIG: &str = "FUSE_CONFIG";
    /// `struct fuse_req` field offsets for the FUSE kprobes (from the kernel's BTF).
    pub const FUSE_KPROBE_LAYOUT: &str = "FUSE_KPROBE_LAYOUT";
    /// Watched FUSE connections (the mount's device number, kernel encoding).
    pub const FUSE_CONNECTIONS: &str = "FUSE_CONNECTIONS";
    /// FUSE daemon tgid -> the connection it serves (learned from replies).
    pub const FUSE_DAEMONS: &str = "FUSE_DAEMONS";
    pub const SEQ: &str = "SEQ";
    /// Tracepoints attached by name: program slot -> what to copy.
    pub const TRACEPOINT_SPECS: &str = "TRACEPOINT_SPECS";
    /// Kernel functions attached by name: address -> what to copy.
    pub const FUNCTION_SPECS: &str = "FUNCTION_SPECS";
    /// Kernel struct offsets the function probes follow (from BTF).
    pub const KERNEL_LAYOUT: &str = "KERNEL_LAYOUT";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// The syscall pair as BTF raw tracepoints (`tp_btf/sys_enter`, `tp_btf/sys_exit`).
    pub const BTF_SYS_ENTER: &str = "vexevent_btf_sys_enter";
    pub const BTF_SYS_EXIT: &str = "vexevent_btf_sys_exit";
    /// The same as classic tracepoints (`raw_syscalls/sys_enter`, `raw_syscalls/sys_exit`).
    pub const SYS_ENTER: &str = "vexevent_sys_enter";
    pub const SYS_EXIT: &str = "vexevent_sys_exit";
    pub const PROCESS_FORK: &str = "vexevent_process_fork";
    /// `sched/sched_process_exit`: frees the exiting thread's (and process's) table slots.
    pub const PROCESS_EXIT: &str = "vexevent_process_exit";
    pub const FUSE_SEND: &str = "vexevent_fuse_request_send";
    pub const FUSE_END: &str = "vexevent_fuse_request_end";
    /// The same pair as kprobes, for kernels without the FUSE tracepoints (before Linux 6.12).
    pub const FUSE_KPROBE_SEND: &str = "vexevent_fuse_kprobe_send";
    pub const FUSE_KPROBE_END: &str = "vexevent_fuse_kprobe_end";
    /// Uprobe and uretprobe on the configured FUSE daemon functions.
    pub const DAEMON_FN_ENTRY: &str = "vexevent_daemon_fn_entry";
    pub const DAEMON_FN_RETURN: &str = "vexevent_daemon_fn_return";
    /// Tracepoints attached by name (`[[tracepoints]]`), one program per slot.
    pub const TRACEPOINTS: [&str; crate::MAX_TRACEPOINTS as usize] = [
        "vexevent_tracepoint_0",
        "vexevent_tracepoint_1",
        "vexevent_tracepoint_2",
        "vexevent_tracepoint_3",
        "vexevent_tracepoint_4",
        "vexevent_tracepoint_5",
        "vexevent_tracepoint_6",
        "vexevent_tracepoint_7",
    ];
    /// Kernel functions attached by name (`[[kernel_functions]]`), as kprobe and kretprobe.
    pub const FUNCTION_ENTRY: &str = "vexevent_function_entry";
    pub const FUNCTION_RETURN: &str = "vexevent_function_return";
    /// Kernel functions of vmlinux attached by name as fentry and fexit, one pair per slot.
    pub const FENTRY: [&str; crate::MAX_FENTRY_SLOTS as usize] = [
        "vexevent_fentry_0",
        "vexevent_fentry_1",
        "vexevent_fentry_2",
        "vexevent_fentry_3",
        "vexevent_fentry_4",
        "vexevent_fentry_5",
        "vexevent_fentry_6",
        "vexevent_fentry_7",
    ];
    pub const FEXIT: [&str; crate::MAX_FENTRY_SLOTS as usize] = [
        "vexevent_fexit_0",
        "vexevent_fexit_1",
        "vexevent_fexit_2",
        "vexevent_fexit_3",
        "vexevent_fexit_4",
        "vexevent_fexit_5",
        "vexevent_fexit_6",
        "vexevent_fexit_7",
    ];
}
