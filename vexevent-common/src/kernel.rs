//! Records of tracepoints and kernel functions attached by name (`[[tracepoints]]`,
//! `[[kernel_functions]]`): what a probe copies (a [`KernelSpec`] per source, written by the
//! loader), where kernel structs keep the fields it follows ([`KernelLayout`], from the running
//! kernel's BTF), and what the record carries ([`KernelBody`] and up to two text slots).

/// Most sources (tracepoints and functions together) one run attaches; the size of the per-source
/// rate table.
pub const MAX_KERNEL_SOURCES: u32 = 64;
/// Most tracepoints one run attaches (the object has one tracepoint program per slot).
pub const MAX_TRACEPOINTS: u32 = 8;
/// Most vmlinux functions one run attaches through fentry/fexit (the object has one pair per
/// slot); the rest attach as kprobes.
pub const MAX_FENTRY_SLOTS: u32 = 8;
/// Numeric values a record carries (tracepoint fields, function arguments).
pub const KERNEL_VALUES: usize = 8;
/// Text values a record carries (strings, paths of dentries).
pub const KERNEL_TEXTS: usize = 2;
/// Bytes of each text slot. A kernel record's text slot `j` starts at
/// `RECORD_PATHS_OFFSET + j * KERNEL_TEXT_BYTES`; the header's `path1_len`/`path2_len` say how
/// many bytes of each are used.
pub const KERNEL_TEXT_BYTES: usize = 1024;
/// Bytes of one name a dentry walk copies (`NAME_MAX` + NUL).
pub const KERNEL_NAME_BYTES: usize = 256;
/// Most dentries a walk follows towards its file system's root.
pub const KERNEL_PATH_DEPTH: u32 = 16;
/// Largest kernel record: header, body, both text slots.
pub const KERNEL_RECORD_MAX: usize = crate::RECORD_PATHS_OFFSET + KERNEL_TEXTS * KERNEL_TEXT_BYTES;
/// Function arguments a probe reads (`x86_64` passes six in registers).
pub const KERNEL_ARGS: usize = 6;

/// How a probe reads one value ([`KernelField::kind`]).
pub mod field_kind {
    /// Slot unused.
    pub const NONE: u8 = 0;
    /// Tracepoint: an integer of `size` bytes at `offset` of the record (zero-extended; userspace
    /// sign-extends the signed ones). Function: argument `offset`, as is.
    pub const INT: u8 = 1;
    /// Tracepoint: a `__data_loc char[]` at `offset` (a u32: offset of the string in the record
    /// in the low half, its length in the high half).
    pub const DATA_LOC_STR: u8 = 2;
    /// Tracepoint: a fixed `char[size]` at `offset`.
    pub const CHAR_ARRAY: u8 = 3;
    /// Function: argument `offset` is a `char *` (a kernel string).
    pub const STR: u8 = 4;
    /// Function: argument `offset` is a `struct dentry *`: device, inode and path within its
    /// file system (names leaf first, each NUL-terminated; userspace reverses them).
    pub const DENTRY: u8 = 5;
    /// Function: argument `offset` is a `struct file *` (its `f_path.dentry`, then as `DENTRY`).
    pub const FILE: u8 = 6;
    /// Function: argument `offset` is a `const struct path *` (its `dentry`, then as `DENTRY`).
    pub const PATH: u8 = 7;
    /// Function: argument `offset` is a `struct inode *`: device and inode, no name.
    pub const INODE: u8 = 8;
    /// Function: argument `offset` is a `struct renamedata *`: its `old_dentry`, as `DENTRY`.
    pub const RENAME_OLD: u8 = 9;
    /// Function: argument `offset` is a `struct renamedata *`: its `new_dentry`, as `DENTRY`.
    pub const RENAME_NEW: u8 = 10;
}

/// One value a probe reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelField {
    /// Tracepoint: byte offset in the record. Function: the argument's index.
    pub offset: u16,
    /// Bytes of a tracepoint integer or char array.
    pub size: u8,
    /// A [`field_kind`] value.
    pub kind: u8,
}

/// [`KernelSpec::flags`] bits.
pub mod spec_kernel {
    /// Time the function: one record at return, with the entry's values, duration and return
    /// value (else one record at entry).
    pub const TIMED: u32 = 1 << 0;
}

/// What a probe copies for one source. Tracepoints: in `TRACEPOINT_SPECS`, at the slot of the
/// program attached to it. Functions: in `FUNCTION_SPECS`, keyed by the
/// function's address (kallsyms).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelSpec {
    /// The source's index in the loader's table (below [`MAX_KERNEL_SOURCES`]).
    pub source: u32,
    /// [`spec_kernel`] bits.
    pub flags: u32,
    /// Most records per second per CPU (0: no cap); the rest are counted, not emitted.
    pub rate_per_sec: u32,
    pub padding: u32,
    pub values: [KernelField; KERNEL_VALUES],
    pub texts: [KernelField; KERNEL_TEXTS],
}

const _: () = assert!(core::mem::size_of::<KernelSpec>() == 56);

/// A CPU's rate window for one source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelRate {
    /// Start of the current one-second window (`bpf_ktime_get_ns`).
    pub window_ns: u64,
    /// Records emitted in it.
    pub count: u64,
}

/// Where kernel structs keep what the function probes follow (byte offsets from the running
/// kernel's BTF; zero where the kernel lacks the struct, and then the kinds that need it are not
/// offered). One entry in the `KERNEL_LAYOUT` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `dentry.d_name.name` (`const unsigned char *`).
    pub dentry_name: u32,
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    pub dentry_sb: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    /// `super_block.s_dev` (`dev_t`, kernel encoding).
    pub sb_dev: u32,
    /// `file.f_path.dentry`.
    pub file_dentry: u32,
    /// `path.dentry`.
    pub path_dentry: u32,
    pub rename_old_dentry: u32,
    pub rename_new_dentry: u32,
    pub padding: u32,
}

const _: () = assert!(core::mem::size_of::<KernelLayout>() == 48);

/// [`KernelBody::flags`] bits.
pub mod kernel_flags {
    /// Text slot 1 (2) was cut short: the walk reached its depth or the slot's end.
    pub const TEXT1_TRUNCATED: u32 = 1 << 0;
    pub const TEXT2_TRUNCATED: u32 = 1 << 1;
    /// A kernel read failed for some value (counted; the value reads 0 / empty).
    pub const READ_FAULT: u32 = 1 << 2;
    /// A timed function's record: the header's `enter_ns`/`exit_ns` are its entry and return,
    /// `ret` its return value.
    pub const RETURNED: u32 = 1 << 3;
    /// The call ran inside a traced syscall: `syscall_nr` and `syscall_enter_ns` say which.
    pub const IN_SYSCALL: u32 = 1 << 4;
}

/// What a tracepoint or kernel function record carries after its header. The header's `op` is
/// `OpKind::Tracepoint` or `OpKind::KernelFunction`; the text slots follow this body.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelBody {
    /// The source's index in the loader's table.
    pub source: u32,
    /// [`kernel_flags`] bits.
    pub flags: u32,
    /// The spec's numeric values, in its order.
    pub values: [u64; KERNEL_VALUES],
    /// Device (kernel encoding) and inode of the object in each text slot (dentry, inode, file
    /// and path arguments; 0 otherwise).
    pub devs: [u32; KERNEL_TEXTS],
    pub inos: [u64; KERNEL_TEXTS],
    /// The traced syscall the call ran in (with [`kernel_flags::IN_SYSCALL`]).
    pub syscall_nr: u32,
    pub padding: u32,
    pub syscall_enter_ns: u64,
}

const _: () = assert!(core::mem::size_of::<KernelBody>() == 112);

/// A timed call between entry and return: the record as built at entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KernelCallBuf {
    pub words: [u64; KERNEL_RECORD_MAX / 8],
}

const _: () = assert!(KERNEL_RECORD_MAX.is_multiple_of(8));

/// Key of a timed call in flight: the thread and the function (its probe address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelCallKey {
    pub tid: u64,
    pub ip: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers with explicit padding; every bit pattern is
    // valid.
    unsafe impl aya::Pod for super::KernelSpec {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelLayout {}
}
