//! The record a probe writes into the ring buffer, and the configuration records the loader writes
//! into maps. Integers and byte arrays only, explicit padding, sizes asserted at compile time.

/// Bytes reserved for each path. `PATH_MAX` is 4096 including the NUL, so every path the kernel
/// accepts fits; a longer one (which the syscall rejects anyway) is flagged as truncated.
pub const PATH_BUF: usize = 4096;
/// Bytes of a `VexFS` ioctl argument struct captured at syscall exit (the largest field we decode
/// ends at byte 48 of the user struct; see design/vexfs.md).
pub const IOCTL_ARG_BYTES: usize = 64;
/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;
/// Bytes of a path the in-kernel prefix trie looks at. Watch prefixes must be shorter.
pub const PREFIX_KEY_BYTES: usize = 256;
/// Number of syscall arguments on `x86_64`.
pub const SYSCALL_ARGS: usize = 6;

/// `RecordHeader::flags` bits.
pub mod record_flags {
    /// The first path did not fit in `PATH_BUF` bytes.
    pub const PATH1_TRUNCATED: u32 = 1 << 0;
    /// The second path did not fit in `PATH_BUF` bytes.
    pub const PATH2_TRUNCATED: u32 = 1 << 1;
    /// Reading the first path from user memory failed (bad pointer).
    pub const PATH1_FAULT: u32 = 1 << 2;
    /// Reading the second path from user memory failed.
    pub const PATH2_FAULT: u32 = 1 << 3;
    /// `SyscallBody::ioctl_arg` holds the first `IOCTL_ARG_BYTES` of the ioctl's argument struct.
    pub const IOCTL_ARG_VALID: u32 = 1 << 4;
    /// Path 2's slot holds the first bytes a write wrote (writes to `VexFS` special files:
    /// `*.vec`, `*.search`, `_vexfs/search`, `_vexfs/control`).
    pub const PAYLOAD: u32 = 1 << 5;
    /// `SyscallBody::file`'s `inode` and `mode` were read from the new file (successful opens on
    /// kernels whose BTF gave the offsets).
    pub const FILE_INFO: u32 = 1 << 6;
    /// The open created the file (`FMODE_CREATED` on the new `struct file`; with `FILE_INFO`).
    pub const FILE_CREATED: u32 = 1 << 7;
}

/// The part every record starts with, whatever its kind. A [`RecordBody`] follows it (which of
/// its variants `op` says), then the paths: path 1 at [`RECORD_PATHS_OFFSET`], path 2 at that
/// plus `PATH_BUF`. A record without a second path ends right after path 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Sequence number of this record in its shard (the CPU that produced it), from 0; a gap
    /// record's is the first lost record's.
    pub seq: u64,
    /// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) at syscall enter (FUSE: when the request was
    /// queued).
    pub enter_ns: u64,
    /// `bpf_ktime_get_ns` at syscall exit (FUSE: when the request ended; gap: when reported).
    pub exit_ns: u64,
    /// Return value (negative errno on failure; FUSE: the reply's error).
    pub ret: i64,
    /// Thread group id (the user's "pid"); FUSE: the requester's.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `x86_64` syscall number ([`NOT_A_SYSCALL`] for other kinds).
    pub syscall_nr: u32,
    /// An [`crate::OpKind`] value, or [`GAP_OP`].
    pub op: u32,
    /// [`record_flags`] bits.
    pub flags: u32,
    /// The CPU (shard) that produced the record; `seq` counts per CPU.
    pub cpu: u32,
    /// Bytes of path 1 (without the NUL), 0 when absent.
    pub path1_len: u32,
    /// Bytes of path 2 (without the NUL), 0 when absent.
    pub path2_len: u32,
    pub comm: [u8; COMM_LEN],
    /// The task's cgroup (v2) id, `bpf_get_current_cgroup_id`: the inode number of its
    /// directory in the cgroup file system; 0 when unknown (FUSE requests, gaps).
    pub cgroup_id: u64,
}

impl RecordHeader {
    /// A header with every field zero (a starting point for building records in tests, replay
    /// and benchmarks).
    pub const ZEROED: RecordHeader = RecordHeader {
        seq: 0,
        enter_ns: 0,
        exit_ns: 0,
        ret: 0,
        pid: 0,
        tid: 0,
        uid: 0,
        gid: 0,
        syscall_nr: 0,
        op: 0,
        flags: 0,
        cpu: 0,
        path1_len: 0,
        path2_len: 0,
        comm: [0; COMM_LEN],
        cgroup_id: 0,
    };
}

/// `RecordHeader::syscall_nr` of records that do not come from a syscall (fork, FUSE, gap).
pub const NOT_A_SYSCALL: u32 = u32::MAX;

/// What a syscall record carries after its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallBody {
    /// Raw syscall arguments as passed at enter; [`crate::SyscallSpec`] says which is what.
    pub args: [u64; SYSCALL_ARGS],
    /// The open file the syscall acted on (its fd argument) or made (an open's new fd).
    pub file: OpenFile,
    /// The first bytes of a `VexFS` ioctl's argument struct, read at exit (valid when
    /// [`record_flags::IOCTL_ARG_VALID`] is set).
    pub ioctl_arg: [u8; IOCTL_ARG_BYTES],
}

/// The open file (the kernel's `struct file`, shared by every fd that refers to it) a syscall
/// record is about, read by the probes through the offsets in [`FileLayout`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenFile {
    /// The open file's key in the probes' fd scope: the same for every fd that shares the open
    /// file (`dup`, `fcntl(F_DUPFD)`, inherited across fork, passed over a Unix socket), so
    /// userspace finds the path an fd refers to whichever process writes through it. The
    /// kernel's `struct file` address (an identity only: never reported), or `(tgid << 32) | fd`
    /// when the kernel's BTF gave no offsets; 0 when unknown (no fd, or not an fd).
    pub key: u64,
    /// Inode number of the file (valid with [`record_flags::FILE_INFO`]).
    pub inode: u64,
    /// `i_mode` of the inode: file type and permission bits (valid with `FILE_INFO`).
    pub mode: u32,
    pub padding: u32,
}

/// What a FUSE request record carries after its header. The header's `enter_ns` is when the
/// request was queued, `exit_ns` when it ended, `ret` its error, `pid`/`tid`/`uid`/`gid`/`comm`
/// those of the requester; the request's names travel as the record's paths (path 1: the entry
/// name; path 2: the second name of RENAME or SYMLINK).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseBody {
    /// The connection (the mount's device number, kernel encoding).
    pub connection: u32,
    /// A [`crate::fuse_opcode`] value.
    pub opcode: u32,
    pub unique: u64,
    /// The daemon thread that replied.
    pub daemon_pid: u32,
    pub daemon_tid: u32,
    /// What the daemon-side probes saw (all zero when they saw neither read nor reply).
    pub daemon: FuseDaemonSide,
}

/// What a fork record carries after its header (`sched_process_fork`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkBody {
    /// The new process's pid.
    pub child_pid: u32,
    pub padding: u32,
}

/// What a gap record carries after its header: the CPU lost `lost` records with sequence numbers
/// from the header's `seq`, whose own timestamps (`exit_ns`, what the merge orders by) spanned
/// `lost_from_ns ..= lost_to_ns`. Their counts by kind follow the body (`[u32; GAP_KINDS]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GapBody {
    pub lost: u64,
    /// Timestamp of the first lost record (`CLOCK_MONOTONIC`).
    pub lost_from_ns: u64,
    /// Timestamp of the last lost record.
    pub lost_to_ns: u64,
}

/// The kind-specific part of a record, right after its [`RecordHeader`]; `RecordHeader::op`
/// says which variant is written. Every variant is plain integers (valid for any bit pattern).
#[repr(C)]
#[derive(Clone, Copy)]
pub union RecordBody {
    pub syscall: SyscallBody,
    pub fuse: FuseBody,
    pub fork: ForkBody,
    pub gap: GapBody,
    /// Tracepoints and kernel functions attached by name.
    pub kernel: crate::KernelBody,
}

impl RecordBody {
    /// Every byte zero.
    pub const ZEROED: RecordBody = RecordBody {
        syscall: SyscallBody {
            args: [0; SYSCALL_ARGS],
            file: OpenFile { key: 0, inode: 0, mode: 0, padding: 0 },
            ioctl_arg: [0; IOCTL_ARG_BYTES],
        },
    };
}

pub const RECORD_HEADER_SIZE: usize = core::mem::size_of::<RecordHeader>();
pub const RECORD_BODY_SIZE: usize = core::mem::size_of::<RecordBody>();
/// Where path 1 starts: after the header and the body.
pub const RECORD_PATHS_OFFSET: usize = RECORD_HEADER_SIZE + RECORD_BODY_SIZE;
/// Largest record: header, body and two full paths. This is the per-CPU scratch buffer's size.
pub const RECORD_MAX_SIZE: usize = RECORD_PATHS_OFFSET + 2 * PATH_BUF;

const _: () = assert!(RECORD_HEADER_SIZE == 96);
const _: () = assert!(core::mem::size_of::<OpenFile>() == 24);
const _: () = assert!(core::mem::size_of::<SyscallBody>() == 136);
const _: () = assert!(core::mem::size_of::<FuseBody>() == 88);
const _: () = assert!(core::mem::size_of::<ForkBody>() == 8);
const _: () = assert!(core::mem::size_of::<GapBody>() == 24);
const _: () = assert!(RECORD_BODY_SIZE == 136);
const _: () = assert!(RECORD_PATHS_OFFSET.is_multiple_of(8));

/// Scratch space a probe assembles a record in before copying it to the ring.
#[repr(C)]
pub struct RecordBuf {
    pub header: RecordHeader,
    pub body: RecordBody,
    pub paths: [u8; 2 * PATH_BUF],
}

const _: () = assert!(core::mem::size_of::<RecordBuf>() == RECORD_MAX_SIZE);

/// Where a syscall keeps what vexevent reads from its arguments: each field is an argument index
/// or [`crate::NO_ARG`]. The probes read the path, fd, buffer and command positions; userspace
/// decodes the rest (flags, mode, offset, ...) from the record's raw arguments. Written by the
/// loader into the `SYSCALL_SPECS` map, keyed by syscall number, from [`crate::SYSCALLS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallSpec {
    /// An [`crate::OpKind`] value.
    pub op: u32,
    /// [`crate::spec_flags`] bits.
    pub flags: u32,
    /// Path 1.
    pub path1_arg: u8,
    /// The directory fd path 1 is relative to ([`crate::NO_ARG`]: the cwd).
    pub dirfd1_arg: u8,
    /// Path 2 (a path, or text such as an xattr name).
    pub path2_arg: u8,
    /// The directory fd path 2 is relative to.
    pub dirfd2_arg: u8,
    /// The fd the operation acts on.
    pub fd_arg: u8,
    /// The fd dup2/dup3 duplicate onto.
    pub new_fd_arg: u8,
    /// The user buffer (read/write), iovec array (readv/writev) or ioctl argument pointer.
    pub buf_arg: u8,
    /// The ioctl command.
    pub cmd_arg: u8,
    /// The `O_*` open flags.
    pub open_flags_arg: u8,
    /// The mode bits (creating opens, mkdir, chmod).
    pub mode_arg: u8,
    /// The file offset (pread/pwrite family).
    pub offset_arg: u8,
    /// The new size (truncate).
    pub size_arg: u8,
    /// The new owner (chown family).
    pub uid_arg: u8,
    pub gid_arg: u8,
    /// The `AT_*` flags (`AT_REMOVEDIR` makes unlinkat an rmdir).
    pub at_flags_arg: u8,
    pub padding: u8,
}

const _: () = assert!(core::mem::size_of::<SyscallSpec>() == 24);

/// Global settings of the probes (one entry in the `CONFIG` array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Bit `1 << op` set for every [`crate::OpKind`] to capture.
    pub op_mask: u64,
    /// The loader's own tgid: its I/O is dropped in the kernel.
    pub self_pid: u32,
    /// Non-zero: every path is in scope (`--watch /`), no prefix lookups.
    pub watch_all: u32,
    /// Non-zero: only tgids present in `PID_FILTER` are captured.
    pub pid_filter_enabled: u32,
    /// Non-zero: only `uid_filter` is captured.
    pub uid_filter_enabled: u32,
    pub uid_filter: u32,
    /// Non-zero: only tasks whose comm equals `comm_filter` are captured.
    pub comm_filter_enabled: u32,
    pub comm_filter: [u8; COMM_LEN],
    /// Offset of `child_pid` in the `sched_process_fork` tracepoint record (read from tracefs).
    pub fork_child_pid_offset: u32,
    /// Number of ring buffers in use (1..=`MAX_SHARDS`); CPU `c` writes to ring
    /// `(c / cpus_per_shard) % shard_count`.
    pub shard_count: u32,
    pub cpus_per_shard: u32,
    pub padding: u32,
}

const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 64);

/// Most ring buffers (shards) the object declares (`EVENTS_0` .. `EVENTS_7`).
pub const MAX_SHARDS: usize = 8;

/// `RecordHeader::op` of a gap record (see [`GapBody`]).
pub const GAP_OP: u32 = 0xFFFF_0001;
/// Entries in a gap record's per-kind counts (index = `OpKind` value; 0 unused).
pub const GAP_KINDS: usize = crate::OpKind::ALL.len() + 1;
/// Size of a gap record: header, body, counts by kind.
pub const GAP_RECORD_SIZE: usize = RECORD_PATHS_OFFSET + 4 * GAP_KINDS;

/// A gap record as the probe writes it.
#[repr(C)]
pub struct GapRecordBuf {
    pub header: RecordHeader,
    /// Its [`GapBody`] variant.
    pub body: RecordBody,
    /// Lost records by `OpKind` value.
    pub by_kind: [u32; GAP_KINDS],
}

const _: () = assert!(core::mem::size_of::<GapRecordBuf>() == GAP_RECORD_SIZE);

/// Records a CPU failed to write and has not yet reported in a gap record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingLoss {
    /// Sequence number of the first unreported lost record.
    pub first_seq: u64,
    /// Unreported lost records.
    pub total: u64,
    /// Timestamp (`exit_ns`) of the first unreported lost record.
    pub first_ns: u64,
    /// Timestamp of the last one.
    pub last_ns: u64,
    /// Unreported lost records by `OpKind` value.
    pub by_kind: [u32; GAP_KINDS],
}

const _: () = assert!(core::mem::size_of::<PendingLoss>() == 32 + 4 * GAP_KINDS);

/// Where the FUSE tracepoints keep their fields (byte offsets read from tracefs `format` files at
/// start), and whether every FUSE connection is watched. One entry in the `FUSE_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseConfig {
    /// Non-zero: every connection is watched (else only those in `FUSE_CONNECTIONS`).
    pub watch_all: u32,
    pub send_connection: u32,
    pub send_unique: u32,
    pub send_opcode: u32,
    pub end_connection: u32,
    pub end_unique: u32,
    pub end_error: u32,
    pub padding: u32,
}

const _: () = assert!(core::mem::size_of::<FuseConfig>() == 32);

/// Where `struct fuse_req` and the structs it points to keep the fields the FUSE kprobes read
/// (byte offsets from the running kernel's BTF), for kernels without the FUSE tracepoints
/// (before Linux 6.12). The kprobes read what the tracepoints would carry and the records use:
/// `connection = req->fm->fc->dev`, `unique`/`opcode` from `req->in.h`, and `error` from
/// `req->out.h`. One entry in the `FUSE_KPROBE_LAYOUT` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseKprobeLayout {
    /// `fuse_req.fm` (`struct fuse_mount *`).
    pub req_fm: u32,
    pub req_in_unique: u32,
    pub req_in_opcode: u32,
    pub req_out_error: u32,
    /// `fuse_mount.fc` (`struct fuse_conn *`).
    pub mount_fc: u32,
    /// `fuse_conn.dev` (`dev_t`, the connection number the tracepoints carry).
    pub conn_dev: u32,
    pub padding: [u32; 2],
}

const _: () = assert!(core::mem::size_of::<FuseKprobeLayout>() == 32);

/// Where the kernel keeps what the probes read to find an fd's open file and describe it (byte
/// offsets from the running kernel's BTF, written by the loader): `current->files->fdt->fd[fd]`
/// is the `struct file`, whose `f_inode` gives the inode number and mode and whose `f_mode`
/// says whether an open created it. One entry in the `FILE_LAYOUT` array; `valid == 0` when the
/// kernel has no BTF (the probes then key fds by `(tgid, fd)`, which does not follow fork or
/// `fcntl(F_DUPFD)`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileLayout {
    /// Non-zero: the offsets below are the running kernel's.
    pub valid: u32,
    /// Non-zero: `SEEDED_FDS` holds fds opened before the run (looked up when an fd's open file
    /// is not in the scope map yet).
    pub seeded_fds: u32,
    /// `task_struct.files` (`struct files_struct *`).
    pub task_files: u32,
    /// `files_struct.fdt` (`struct fdtable *`).
    pub files_fdt: u32,
    /// `fdtable.max_fds` (`unsigned int`).
    pub fdt_max_fds: u32,
    /// `fdtable.fd` (`struct file **`).
    pub fdt_fd: u32,
    /// `file.f_inode` (`struct inode *`).
    pub file_inode: u32,
    /// `file.f_mode` (`fmode_t`, 4 bytes).
    pub file_mode: u32,
    /// `file.f_ref` (Linux 6.13+) or `file.f_count` (`atomic_long_t`, 8 bytes).
    pub file_count: u32,
    /// The count's value while one reference is left (0 for `f_ref`, 1 for `f_count`).
    pub file_count_one: u32,
    /// `inode.i_ino` (8 bytes).
    pub inode_ino: u32,
    /// `inode.i_mode` (`umode_t`, 2 bytes).
    pub inode_mode: u32,
}

const _: () = assert!(core::mem::size_of::<FileLayout>() == 48);

/// `FMODE_CREATED` in `file.f_mode` (include/linux/fs.h, the same bit since Linux 4.19: BTF
/// carries no macros).
pub const FMODE_CREATED: u32 = 1 << 20;

/// Key of the in-flight FUSE request table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseRequestKey {
    pub connection: u32,
    pub padding: u32,
    pub unique: u64,
}

/// Bytes of a name the daemon side captures from a FUSE request (`NAME_MAX` + NUL).
pub const FUSE_NAME_BYTES: usize = 256;

/// What the daemon side adds to a `FuseRequest` record ([`FuseBody::daemon`]; all zero when the
/// daemon's read or reply was not seen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseDaemonSide {
    /// `CLOCK_MONOTONIC` when the daemon's read of the request returned.
    pub received_ns: u64,
    /// When the daemon started writing its reply.
    pub replied_ns: u64,
    /// The node the request is about (`fuse_in_header.nodeid`).
    pub nodeid: u64,
    /// The node an entry reply (LOOKUP, CREATE, MKDIR, MKNOD, SYMLINK, LINK) names.
    pub reply_nodeid: u64,
    /// RENAME's new parent, LINK's old node.
    pub aux_nodeid: u64,
    /// `(tgid << 32) | tid` of the daemon thread that read the request.
    pub reader: u64,
    /// Time spent in the configured daemon functions (uprobes) while serving the request.
    pub functions_ns: u64,
    /// Calls of those functions while serving the request.
    pub function_calls: u32,
    pub padding: u32,
}

const _: () = assert!(core::mem::size_of::<FuseDaemonSide>() == 64);

/// Key of the watch-prefix trie: the first `PREFIX_KEY_BYTES` of a path.
pub type PrefixKey = [u8; PREFIX_KEY_BYTES];

/// Most fds open on watched files before the run that the probes follow (`SEEDED_FDS` entries).
pub const SEEDED_FDS_MAX: u32 = 1 << 14;

/// Key of an fd in the seeded-fd map (and of the fd scope without BTF): `(tgid << 32) | fd`.
#[must_use]
pub const fn fd_scope_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers and byte arrays with explicit padding; every
    // bit pattern is valid.
    unsafe impl aya::Pod for super::SyscallSpec {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingLoss {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FuseConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FuseKprobeLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileLayout {}
}
