//! Every map of the object, and the counter helper. Sizes the loader may override are marked.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use vexevent_common::{
    COMM_LEN, FUSE_NAME_BYTES, FileLayout, FuseConfig, FuseDaemonSide, FuseKprobeLayout, FuseRequestKey,
    GAP_KINDS, GapRecordBuf, KERNEL_STAT_COUNT, KernelCallBuf, KernelCallKey, KernelLayout, KernelRate,
    KernelSpec, KernelStat, MAX_KERNEL_SOURCES, MAX_SYSCALL_NR, MAX_TRACEPOINTS, PendingLoss, PrefixKey,
    ProbeConfig, RecordBuf, SEEDED_FDS_MAX, SYSCALL_ARGS, SyscallSpec,
};

/// Default ring size; the loader sets the configured size at load time.
const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// Records for userspace, one ring per shard (group of CPUs); the loader sizes the ones in use
/// and shrinks the rest to one page.
#[map]
pub static EVENTS_0: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
pub static EVENTS_1: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
pub static EVENTS_2: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
pub static EVENTS_3: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
pub static EVENTS_4: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
pub static EVENTS_5: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
pub static EVENTS_6: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
#[map]
pub static EVENTS_7: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Per-CPU records lost and not yet reported in a gap record.
#[map]
pub static PENDING_LOSS: PerCpuArray<PendingLoss> = PerCpuArray::with_max_entries(1, 0);

/// Non-zero while the consumer drains the rings on its own short timer: a probe then submits
/// without waking it (below the wakeup threshold), so the traced task pays no wakeup per record
/// and the consumer is not pulled onto the traced task's CPU. Zero (at load, and while the
/// consumer sleeps because nothing came) means every record wakes it.
#[map]
pub static CONSUMER_POLLING: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU records lost, by `OpKind` value (cumulative, for stats).
#[map]
pub static LOST_BY_KIND: PerCpuArray<u64> = PerCpuArray::with_max_entries(GAP_KINDS as u32, 0);

/// Per-CPU scratch space a gap record is assembled in.
#[map]
pub static GAP_SCRATCH: PerCpuArray<GapRecordBuf> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space a record is assembled in (too large for the 512-byte stack).
#[map]
pub static SCRATCH: PerCpuArray<RecordBuf> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for a prefix-trie key.
#[map]
pub static PREFIX_SCRATCH: PerCpuArray<aya_ebpf::maps::lpm_trie::Key<PrefixKey>> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-CPU sequence numbers: every record a CPU emits (or fails to emit) takes the next one.
#[map]
pub static SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Syscall number -> what to capture (written by the loader; `op == 0` means not traced).
#[map]
pub static SYSCALL_SPECS: Array<SyscallSpec> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

#[map]
pub static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

/// Watched path prefixes ("/dir/" and "/dir\0").
#[map]
pub static WATCH_PREFIXES: LpmTrie<PrefixKey, u8> = LpmTrie::with_max_entries(64, 0);

/// An open file's scope, and the inode it had when marked: an entry whose file was freed
/// without a close vexevent saw (its process exited) and whose memory now holds another open
/// file is recognized by its other inode and dropped.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileScope {
    /// `struct inode *` of the file when it was marked (0 without BTF offsets).
    pub inode: u64,
    /// `NOT_WATCHED`, `WATCHED` or `VEXFS_SPECIAL` (see `scope`).
    pub flag: u8,
    pub padding: [u8; 7],
}

/// Open files (keyed as `OpenFile::key`: the `struct file` address, or `(tgid << 32) | fd`
/// without BTF) that refer to watched files. Not an LRU map: an eviction would silently take a
/// watched file out of scope; a full table refuses the insert, which is counted (`ScopeFull`).
/// Entries leave at the file's last close; one left by a process that exited with the file open
/// stays until an open reuses the address (so, with BTF, there are never more than the kernel
/// has `struct file`s).
#[map]
pub static FD_SCOPE: HashMap<u64, FileScope> = HashMap::with_max_entries(1 << 17, 0);

/// `(tgid << 32) | fd` of fds open on watched files when the run started (from /proc): the
/// first lookup of such an fd moves the mark to its open file.
#[map]
pub static SEEDED_FDS: HashMap<u64, u8> = HashMap::with_max_entries(SEEDED_FDS_MAX, 0);

/// Where the kernel keeps an fd's open file (written by the loader from BTF).
#[map]
pub static FILE_LAYOUT: Array<FileLayout> = Array::with_max_entries(1, 0);

/// Tgids whose cwd is inside a watched directory (removed when the process's leader exits; a
/// full table refuses the insert, counted as `ScopeFull`).
#[map]
pub static CWD_SCOPE: HashMap<u32, u8> = HashMap::with_max_entries(1 << 15, 0);

/// Tgids to capture when the pid filter is on.
#[map]
pub static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Kernel counters, indexed by `KernelStat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_STAT_COUNT, 0);

#[map]
pub static FUSE_CONFIG: Array<FuseConfig> = Array::with_max_entries(1, 0);

/// `struct fuse_req` field offsets for the FUSE kprobes (written by the loader from BTF).
#[map]
pub static FUSE_KPROBE_LAYOUT: Array<FuseKprobeLayout> = Array::with_max_entries(1, 0);

/// Watched FUSE connections (device numbers, kernel encoding).
#[map]
pub static FUSE_CONNECTIONS: HashMap<u32, u8> = HashMap::with_max_entries(256, 0);

/// A FUSE request between queueing and reply.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FuseInflight {
    pub opcode: u32,
    pub padding: u32,
    pub queued_ns: u64,
    /// `(tgid << 32) | tid` of the requester.
    pub requester: u64,
    pub uid_gid: u64,
    pub comm: [u8; COMM_LEN],
    /// Filled in by the daemon-side probes.
    pub daemon: FuseDaemonSide,
    pub name1_len: u32,
    pub name2_len: u32,
    pub name1: [u8; FUSE_NAME_BYTES],
    pub name2: [u8; FUSE_NAME_BYTES],
}

/// Per-CPU space a queued FUSE request is assembled in (too large for the stack).
#[map]
pub static FUSE_SCRATCH: PerCpuArray<FuseInflight> = PerCpuArray::with_max_entries(1, 0);

/// Daemon thread -> the request it read last (the one it is serving).
#[map]
pub static DAEMON_SERVING: LruHashMap<u32, FuseRequestKey> = LruHashMap::with_max_entries(1024, 0);

/// Daemon thread -> when it entered a configured daemon function.
#[map]
pub static DAEMON_FN_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// FUSE daemon tgid -> the connection it serves (learned when it replies).
#[map]
pub static FUSE_DAEMONS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(256, 0);

/// (connection, unique) -> the queued request. Not an LRU map (an eviction would lose a request
/// silently): the kernel ends every request it queued, with an error when the connection is
/// aborted (the daemon died), and a full table refuses the insert, counted as
/// `LostInflightFull`.
#[map]
pub static FUSE_INFLIGHT: HashMap<FuseRequestKey, FuseInflight> = HashMap::with_max_entries(1 << 12, 0);

/// Slots for a syscall's arguments in the probes: `SYSCALL_ARGS` padded to a power of two, so an
/// argument index from the syscall table can be masked into range. (Older verifiers, Linux 6.1
/// for one, lose the bound of an index the compiler spilled to the stack and reject the read; a
/// mask on the register itself they follow.)
pub const ARG_SLOTS: usize = 8;
const _: () = assert!(ARG_SLOTS.is_power_of_two() && ARG_SLOTS >= SYSCALL_ARGS);

/// A syscall's arguments, padded to `ARG_SLOTS` with zeros.
pub type Args = [u64; ARG_SLOTS];

/// A syscall between enter and exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    pub nr: u32,
    /// 1 between enter and exit; slots are reused, never deleted, in the steady state.
    pub active: u32,
    pub enter_ns: u64,
    pub args: Args,
    /// The fd argument's open file, found at enter (`key` 0: none).
    pub file: OpenFd,
}

/// An fd's open file as the probes found it, and its scope flag.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct OpenFd {
    /// `OpenFile::key`.
    pub key: u64,
    /// The `struct file` address (0 without BTF offsets).
    pub file: u64,
    pub flag: u8,
    pub padding: [u8; 7],
}

/// Thread id -> the syscall it is in. A thread's slot is reused until it exits (then removed);
/// not an LRU map: an eviction would lose a syscall silently, a full table refuses the insert,
/// counted as `LostInflightFull`.
#[map]
pub static INFLIGHT: HashMap<u32, Inflight> = HashMap::with_max_entries(1 << 15, 0);

/// Adds one to a kernel counter (per CPU: no atomics needed, summed by userspace).
#[inline(always)]
pub fn count(stat: KernelStat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the pointer is to this CPU's slot of a map value; syscall tracepoint programs
        // run with preemption disabled, so nothing else writes it concurrently.
        unsafe { *counter += 1 };
    }
}

/// Takes this CPU's next sequence number.
#[inline(always)]
pub fn next_seq() -> u64 {
    match SEQ.get_ptr_mut(0) {
        Some(slot) => {
            // SAFETY: as in `count`.
            unsafe {
                let seq = *slot;
                *slot = seq + 1;
                seq
            }
        }
        None => 0,
    }
}

/// Tracepoints attached by name: program slot -> what to copy (written by the loader).
#[map]
pub static TRACEPOINT_SPECS: Array<KernelSpec> = Array::with_max_entries(MAX_TRACEPOINTS, 0);

/// Kernel functions attached by name: probe address -> what to copy (written by the loader).
#[map]
pub static FUNCTION_SPECS: HashMap<u64, KernelSpec> = HashMap::with_max_entries(MAX_KERNEL_SOURCES, 0);

/// Kernel struct offsets the function probes follow (written by the loader from BTF).
#[map]
pub static KERNEL_LAYOUT: Array<KernelLayout> = Array::with_max_entries(1, 0);

/// Per-CPU rate windows, by source index.
#[map]
pub static KERNEL_RATE: PerCpuArray<KernelRate> = PerCpuArray::with_max_entries(MAX_KERNEL_SOURCES, 0);

/// Timed kernel function calls between entry and return: the record built at entry. LRU: a call
/// whose return is never seen (the probe attached mid-call) ages out.
#[map]
pub static KERNEL_CALLS: LruHashMap<KernelCallKey, KernelCallBuf> = LruHashMap::with_max_entries(1024, 0);
