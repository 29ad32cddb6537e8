//! Operation kinds and the table of traced `x86_64` syscalls: which argument is a path, a directory
//! fd or an fd. The loader writes it into `SYSCALL_SPECS`; the probes read it; userspace decodes
//! with it. One table, so the two sides cannot drift.

use crate::SyscallSpec;

/// "No such argument" in a [`SyscallSpec`].
pub const NO_ARG: u8 = 0xff;
/// `AT_FDCWD` as it appears in a 64-bit syscall argument (the int -100, zero-extended).
pub const AT_FDCWD_ARG: u64 = 0xffff_ff9c;

crate::counted_enum! {
    /// What a traced syscall does, as far as vexevent cares.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum OpKind {
        Open = 1,
        Read,
        Write,
        Close,
        Rename,
        Unlink,
        Rmdir,
        Mkdir,
        Symlink,
        Link,
        Chmod,
        Chown,
        Truncate,
        Fsync,
        SetXattr,
        RemoveXattr,
        Ioctl,
        Mount,
        Umount,
        /// Changes the cwd: keeps scope and path resolution right; no semantic event of its own.
        Chdir,
        /// Duplicates an fd: keeps scope and path resolution right; no semantic event of its own.
        Dup,
        /// A process forked (from `sched_process_fork`); see [`crate::ForkBody`].
        Fork,
        /// A FUSE request from queueing to reply (`fuse_request_send`/`fuse_request_end`); see
        /// [`crate::FuseBody`].
        FuseRequest,
        /// A tracepoint attached by name (`[[tracepoints]]`); see [`crate::KernelBody`].
        Tracepoint,
        /// A kernel function attached by name (`[[kernel_functions]]`); see
        /// [`crate::KernelBody`].
        KernelFunction,
    }
}

// `OpKind` values are 1..=ALL.len(), in `ALL`'s order (0 means "not traced" in `SYSCALL_SPECS`).
const _: () = {
    let mut i = 0;
    while i < OpKind::ALL.len() {
        assert!(OpKind::ALL[i] as usize == i + 1);
        i += 1;
    }
    // Every kind has a bit in `ProbeConfig::op_mask`.
    assert!(OpKind::ALL.len() < 64);
};

impl OpKind {
    /// The name used on the command line and in configuration.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Open => "open",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Close => "close",
            OpKind::Rename => "rename",
            OpKind::Unlink => "unlink",
            OpKind::Rmdir => "rmdir",
            OpKind::Mkdir => "mkdir",
            OpKind::Symlink => "symlink",
            OpKind::Link => "link",
            OpKind::Chmod => "chmod",
            OpKind::Chown => "chown",
            OpKind::Truncate => "truncate",
            OpKind::Fsync => "fsync",
            OpKind::SetXattr => "setxattr",
            OpKind::RemoveXattr => "removexattr",
            OpKind::Ioctl => "ioctl",
            OpKind::Mount => "mount",
            OpKind::Umount => "umount",
            OpKind::Chdir => "chdir",
            OpKind::Dup => "dup",
            OpKind::Fork => "fork",
            OpKind::FuseRequest => "fuse",
            OpKind::Tracepoint => "tracepoint",
            OpKind::KernelFunction => "kernel_function",
        }
    }

    /// Bit of this kind in `ProbeConfig::op_mask`.
    #[must_use]
    pub const fn mask_bit(self) -> u64 {
        1 << (self as u32)
    }

    /// Kinds that do not come from the syscall table (their records carry no paths).
    #[must_use]
    pub const fn is_syscall(self) -> bool {
        !matches!(self, OpKind::Fork | OpKind::FuseRequest | OpKind::Tracepoint | OpKind::KernelFunction)
    }

    /// Kinds that keep the probes' scope state right; always captured whatever the op filter.
    #[must_use]
    pub const fn is_bookkeeping(self) -> bool {
        matches!(self, OpKind::Open | OpKind::Close | OpKind::Chdir | OpKind::Dup | OpKind::Fork)
    }
}

impl TryFrom<u32> for OpKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match (value as usize).checked_sub(1).and_then(|index| OpKind::ALL.get(index)) {
            Some(op) => Ok(*op),
            None => Err(value),
        }
    }
}

/// [`SyscallSpec::flags`] bits.
pub mod spec_flags {
    /// A non-negative return value is a new fd referring to path 1 (open family).
    pub const RET_IS_NEW_FD: u32 = 1 << 0;
    /// The fd argument is closed by the call.
    pub const CLOSES_FD: u32 = 1 << 1;
    /// Path 2 is text (xattr name, symlink target, mount source), not a path to scope or resolve.
    pub const PATH2_IS_TEXT: u32 = 1 << 2;
    /// A non-negative return value duplicates the fd argument (dup family; dup2/dup3 also name
    /// the new fd in an argument).
    pub const DUPLICATES_FD: u32 = 1 << 3;
    /// Sets the cwd to path 1 (chdir) or to the fd argument (fchdir).
    pub const SETS_CWD: u32 = 1 << 4;
    /// The probe copies the ioctl argument struct when the ioctl type is `VexFS`'s.
    pub const IOCTL: u32 = 1 << 5;
    /// Creates like `open(path, O_CREAT | O_WRONLY | O_TRUNC, mode)` without a flags argument
    /// (creat).
    pub const IMPLIES_CREATE: u32 = 1 << 6;
    /// The buffer argument is an iovec array.
    pub const VECTORED: u32 = 1 << 7;
    /// A FUSE daemon reads requests and writes replies on /dev/fuse with this call: the probes
    /// look at its buffer when the caller is a known daemon.
    pub const FUSE_DAEMON_IO: u32 = 1 << 8;
    /// The probe keeps the first bytes written when the fd is a `VexFS` special file.
    pub const CAPTURES_DATA: u32 = 1 << 9;
    /// The open flags argument points to a `struct open_how` (openat2): the probe reads its
    /// `flags` and `mode` and puts them in the record in place of that argument and the next (the
    /// struct's size), so the record's open flags and mode arguments hold them as for openat.
    /// Both are 0 when the struct cannot be read (the syscall then fails with EFAULT too).
    pub const OPEN_HOW: u32 = 1 << 10;
}

/// The ioctl type (`_IOC_TYPE`, bits 8..16 of the command) of `VexFS`'s vector ioctls; other
/// ioctls are not file-system events vexevent reports.
pub const VEXFS_IOCTL_TYPE: u8 = b'V';

/// One row of the syscall table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEntry {
    /// `x86_64` syscall number.
    pub nr: u32,
    /// Kernel name of the syscall (its `syscalls/sys_enter_<name>` tracepoint; umount2 is `umount`).
    pub name: &'static str,
    pub spec: SyscallSpec,
}

const N: u8 = NO_ARG;

/// A row with no argument positions; the methods below add them.
const fn sys(nr: u32, name: &'static str, op: OpKind) -> SyscallEntry {
    SyscallEntry {
        nr,
        name,
        spec: SyscallSpec {
            op: op as u32,
            flags: 0,
            path1_arg: N,
            dirfd1_arg: N,
            path2_arg: N,
            dirfd2_arg: N,
            fd_arg: N,
            new_fd_arg: N,
            buf_arg: N,
            cmd_arg: N,
            open_flags_arg: N,
            mode_arg: N,
            offset_arg: N,
            size_arg: N,
            uid_arg: N,
            gid_arg: N,
            at_flags_arg: N,
            padding: 0,
        },
    }
}

impl SyscallEntry {
    const fn flags(mut self, flags: u32) -> Self {
        self.spec.flags = flags;
        self
    }

    /// Path 1, relative to the cwd.
    const fn path(mut self, arg: u8) -> Self {
        self.spec.path1_arg = arg;
        self
    }

    /// Path 1, relative to the directory fd `dirfd`.
    const fn path_at(mut self, dirfd: u8, arg: u8) -> Self {
        self.spec.dirfd1_arg = dirfd;
        self.spec.path1_arg = arg;
        self
    }

    /// Path 2 (or text), relative to the cwd.
    const fn path2(mut self, arg: u8) -> Self {
        self.spec.path2_arg = arg;
        self
    }

    /// Path 2, relative to the directory fd `dirfd`.
    const fn path2_at(mut self, dirfd: u8, arg: u8) -> Self {
        self.spec.dirfd2_arg = dirfd;
        self.spec.path2_arg = arg;
        self
    }

    const fn fd(mut self, arg: u8) -> Self {
        self.spec.fd_arg = arg;
        self
    }

    const fn new_fd(mut self, arg: u8) -> Self {
        self.spec.new_fd_arg = arg;
        self
    }

    const fn buf(mut self, arg: u8) -> Self {
        self.spec.buf_arg = arg;
        self
    }

    const fn cmd(mut self, arg: u8) -> Self {
        self.spec.cmd_arg = arg;
        self
    }

    const fn open_flags(mut self, arg: u8) -> Self {
        self.spec.open_flags_arg = arg;
        self
    }

    const fn mode(mut self, arg: u8) -> Self {
        self.spec.mode_arg = arg;
        self
    }

    const fn offset(mut self, arg: u8) -> Self {
        self.spec.offset_arg = arg;
        self
    }

    const fn size(mut self, arg: u8) -> Self {
        self.spec.size_arg = arg;
        self
    }

    const fn owner(mut self, uid: u8, gid: u8) -> Self {
        self.spec.uid_arg = uid;
        self.spec.gid_arg = gid;
        self
    }

    const fn at_flags(mut self, arg: u8) -> Self {
        self.spec.at_flags_arg = arg;
        self
    }
}

use spec_flags::{
    CAPTURES_DATA, CLOSES_FD, DUPLICATES_FD, FUSE_DAEMON_IO, IMPLIES_CREATE, IOCTL, OPEN_HOW, PATH2_IS_TEXT,
    RET_IS_NEW_FD, SETS_CWD, VECTORED,
};

/// Every traced syscall (`x86_64` numbers): the only place syscall numbers and argument positions
/// are written down. Tracepoints missing on a kernel are reported and skipped.
pub const SYSCALLS: &[SyscallEntry] = &[
    sys(0, "read", OpKind::Read).fd(0).buf(1).flags(FUSE_DAEMON_IO),
    sys(1, "write", OpKind::Write).fd(0).buf(1).flags(FUSE_DAEMON_IO | CAPTURES_DATA),
    sys(2, "open", OpKind::Open).path(0).open_flags(1).mode(2).flags(RET_IS_NEW_FD),
    sys(3, "close", OpKind::Close).fd(0).flags(CLOSES_FD),
    sys(16, "ioctl", OpKind::Ioctl).fd(0).cmd(1).buf(2).flags(IOCTL),
    sys(17, "pread64", OpKind::Read).fd(0).buf(1).offset(3),
    sys(18, "pwrite64", OpKind::Write).fd(0).buf(1).offset(3).flags(CAPTURES_DATA),
    sys(19, "readv", OpKind::Read).fd(0).buf(1).flags(VECTORED | FUSE_DAEMON_IO),
    sys(20, "writev", OpKind::Write).fd(0).buf(1).flags(VECTORED | FUSE_DAEMON_IO),
    sys(32, "dup", OpKind::Dup).fd(0).flags(DUPLICATES_FD),
    sys(33, "dup2", OpKind::Dup).fd(0).new_fd(1).flags(DUPLICATES_FD),
    sys(74, "fsync", OpKind::Fsync).fd(0),
    sys(75, "fdatasync", OpKind::Fsync).fd(0),
    sys(76, "truncate", OpKind::Truncate).path(0).size(1),
    sys(77, "ftruncate", OpKind::Truncate).fd(0).size(1),
    sys(80, "chdir", OpKind::Chdir).path(0).flags(SETS_CWD),
    sys(81, "fchdir", OpKind::Chdir).fd(0).flags(SETS_CWD),
    sys(82, "rename", OpKind::Rename).path(0).path2(1),
    sys(83, "mkdir", OpKind::Mkdir).path(0).mode(1),
    sys(84, "rmdir", OpKind::Rmdir).path(0),
    sys(85, "creat", OpKind::Open).path(0).mode(1).flags(RET_IS_NEW_FD | IMPLIES_CREATE),
    sys(86, "link", OpKind::Link).path(0).path2(1),
    sys(87, "unlink", OpKind::Unlink).path(0),
    // symlink(target, linkpath): path 1 is the new link, path 2 the target text.
    sys(88, "symlink", OpKind::Symlink).path(1).path2(0).flags(PATH2_IS_TEXT),
    sys(90, "chmod", OpKind::Chmod).path(0).mode(1),
    sys(91, "fchmod", OpKind::Chmod).fd(0).mode(1),
    sys(92, "chown", OpKind::Chown).path(0).owner(1, 2),
    sys(93, "fchown", OpKind::Chown).fd(0).owner(1, 2),
    sys(94, "lchown", OpKind::Chown).path(0).owner(1, 2),
    // mount(source, target, fstype, flags, data): path 1 is the mount point, path 2 the source.
    sys(165, "mount", OpKind::Mount).path(1).path2(0).flags(PATH2_IS_TEXT),
    sys(166, "umount", OpKind::Umount).path(0),
    sys(188, "setxattr", OpKind::SetXattr).path(0).path2(1).flags(PATH2_IS_TEXT),
    sys(189, "lsetxattr", OpKind::SetXattr).path(0).path2(1).flags(PATH2_IS_TEXT),
    sys(190, "fsetxattr", OpKind::SetXattr).fd(0).path2(1).flags(PATH2_IS_TEXT),
    sys(197, "removexattr", OpKind::RemoveXattr).path(0).path2(1).flags(PATH2_IS_TEXT),
    sys(198, "lremovexattr", OpKind::RemoveXattr).path(0).path2(1).flags(PATH2_IS_TEXT),
    sys(199, "fremovexattr", OpKind::RemoveXattr).fd(0).path2(1).flags(PATH2_IS_TEXT),
    sys(257, "openat", OpKind::Open).path_at(0, 1).open_flags(2).mode(3).flags(RET_IS_NEW_FD),
    sys(258, "mkdirat", OpKind::Mkdir).path_at(0, 1).mode(2),
    sys(260, "fchownat", OpKind::Chown).path_at(0, 1).owner(2, 3).at_flags(4),
    // unlinkat with AT_REMOVEDIR is an rmdir.
    sys(263, "unlinkat", OpKind::Unlink).path_at(0, 1).at_flags(2),
    sys(264, "renameat", OpKind::Rename).path_at(0, 1).path2_at(2, 3),
    sys(265, "linkat", OpKind::Link).path_at(0, 1).path2_at(2, 3).at_flags(4),
    // symlinkat(target, newdirfd, linkpath)
    sys(266, "symlinkat", OpKind::Symlink).path_at(1, 2).path2(0).flags(PATH2_IS_TEXT),
    sys(268, "fchmodat", OpKind::Chmod).path_at(0, 1).mode(2),
    sys(292, "dup3", OpKind::Dup).fd(0).new_fd(1).flags(DUPLICATES_FD),
    sys(295, "preadv", OpKind::Read).fd(0).buf(1).offset(3).flags(VECTORED),
    sys(296, "pwritev", OpKind::Write).fd(0).buf(1).offset(3).flags(VECTORED),
    sys(316, "renameat2", OpKind::Rename).path_at(0, 1).path2_at(2, 3),
    sys(327, "preadv2", OpKind::Read).fd(0).buf(1).offset(3).flags(VECTORED),
    sys(328, "pwritev2", OpKind::Write).fd(0).buf(1).offset(3).flags(VECTORED),
    // openat2(dirfd, path, how, size): the probe puts how->flags and how->mode in arguments 2, 3.
    sys(437, "openat2", OpKind::Open).path_at(0, 1).open_flags(2).mode(3).flags(RET_IS_NEW_FD | OPEN_HOW),
    sys(452, "fchmodat2", OpKind::Chmod).path_at(0, 1).mode(2).at_flags(3),
    // setxattrat(dfd, path, at_flags, name, args, size), removexattrat(dfd, path, at_flags, name)
    sys(463, "setxattrat", OpKind::SetXattr).path_at(0, 1).at_flags(2).path2(3).flags(PATH2_IS_TEXT),
    sys(466, "removexattrat", OpKind::RemoveXattr).path_at(0, 1).at_flags(2).path2(3).flags(PATH2_IS_TEXT),
];

/// Syscall numbers are below this on `x86_64`: the size of the `SYSCALL_SPECS` array.
pub const MAX_SYSCALL_NR: u32 = 512;

// Every row: a number the `SYSCALL_SPECS` array holds, argument positions that exist, and only
// syscall kinds.
const _: () = {
    let mut i = 0;
    while i < SYSCALLS.len() {
        let entry = &SYSCALLS[i];
        assert!(entry.nr < MAX_SYSCALL_NR);
        assert!(OpKind::ALL[entry.spec.op as usize - 1].is_syscall());
        let spec = &entry.spec;
        let positions = [
            spec.path1_arg,
            spec.dirfd1_arg,
            spec.path2_arg,
            spec.dirfd2_arg,
            spec.fd_arg,
            spec.new_fd_arg,
            spec.buf_arg,
            spec.cmd_arg,
            spec.open_flags_arg,
            spec.mode_arg,
            spec.offset_arg,
            spec.size_arg,
            spec.uid_arg,
            spec.gid_arg,
            spec.at_flags_arg,
        ];
        let mut j = 0;
        while j < positions.len() {
            assert!(positions[j] == NO_ARG || (positions[j] as usize) < crate::SYSCALL_ARGS);
            j += 1;
        }
        i += 1;
    }
};

/// Looks a syscall up by number.
#[must_use]
pub fn syscall_by_nr(nr: u32) -> Option<&'static SyscallEntry> {
    SYSCALLS.iter().find(|entry| entry.nr == nr)
}
