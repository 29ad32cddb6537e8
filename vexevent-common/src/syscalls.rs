//! Operation kinds and the table of traced `x86_64` syscalls: which argument is a path, a directory
//! fd or an fd. The loader writes it into `SYSCALL_SPECS`; the probes read it; userspace decodes
//! with it. One table, so the two sides cannot drift.

use crate::SyscallSpec;

/// "No such argument" in a [`SyscallSpec`].
pub const NO_ARG: u8 = 0xff;
/// `AT_FDCWD` as it appears in a 64-bit syscall argument (the int -100, zero-extended).
pub const AT_FDCWD_ARG: u64 = 0xffff_ff9c;

/// What a traced syscall does, as far as vexevent cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
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
    /// A process forked (from `sched_process_fork`); carries the child pid in `ret`.
    Fork,
    /// A FUSE request from queueing to reply (`fuse_request_send`/`fuse_request_end`); see
    /// [`crate::fuse_args`] for where its fields sit in the record.
    FuseRequest,
}

impl OpKind {
    /// Every kind, in code order.
    pub const ALL: [OpKind; 23] = [
        OpKind::Open,
        OpKind::Read,
        OpKind::Write,
        OpKind::Close,
        OpKind::Rename,
        OpKind::Unlink,
        OpKind::Rmdir,
        OpKind::Mkdir,
        OpKind::Symlink,
        OpKind::Link,
        OpKind::Chmod,
        OpKind::Chown,
        OpKind::Truncate,
        OpKind::Fsync,
        OpKind::SetXattr,
        OpKind::RemoveXattr,
        OpKind::Ioctl,
        OpKind::Mount,
        OpKind::Umount,
        OpKind::Chdir,
        OpKind::Dup,
        OpKind::Fork,
        OpKind::FuseRequest,
    ];

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
        !matches!(self, OpKind::Fork | OpKind::FuseRequest)
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
        match value {
            1..=23 => Ok(OpKind::ALL[value as usize - 1]),
            other => Err(other),
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
    /// A non-negative return value duplicates the fd argument (dup family; for dup2/dup3 it is
    /// also argument 1).
    pub const DUPLICATES_FD: u32 = 1 << 3;
    /// Sets the cwd to path 1 (chdir) or to the fd argument (fchdir).
    pub const SETS_CWD: u32 = 1 << 4;
    /// The probe copies the ioctl argument struct when the ioctl type is `VexFS`'s.
    pub const IOCTL: u32 = 1 << 5;
}

/// One row of the syscall table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEntry {
    /// `x86_64` syscall number.
    pub nr: u32,
    /// Kernel name of the syscall (its `syscalls/sys_enter_<name>` tracepoint; umount2 is `umount`).
    pub name: &'static str,
    pub spec: SyscallSpec,
}

const fn entry(
    nr: u32,
    name: &'static str,
    op: OpKind,
    flags: u32,
    paths: [u8; 4],
    fd_arg: u8,
) -> SyscallEntry {
    SyscallEntry {
        nr,
        name,
        spec: SyscallSpec {
            op: op as u32,
            flags,
            path1_arg: paths[0],
            dirfd1_arg: paths[1],
            path2_arg: paths[2],
            dirfd2_arg: paths[3],
            fd_arg,
            padding: [0; 3],
        },
    }
}

const N: u8 = NO_ARG;
/// No paths.
const NP: [u8; 4] = [N, N, N, N];
/// Path in argument 0, relative to the cwd.
const P0: [u8; 4] = [0, N, N, N];
/// Path in argument 1, relative to the dirfd in argument 0.
const P1D0: [u8; 4] = [1, 0, N, N];

use spec_flags::{CLOSES_FD, DUPLICATES_FD, IOCTL, PATH2_IS_TEXT, RET_IS_NEW_FD, SETS_CWD};

/// Every traced syscall (`x86_64` numbers). Tracepoints missing on a kernel are reported and skipped.
pub const SYSCALLS: &[SyscallEntry] = &[
    entry(0, "read", OpKind::Read, 0, NP, 0),
    entry(1, "write", OpKind::Write, 0, NP, 0),
    entry(2, "open", OpKind::Open, RET_IS_NEW_FD, P0, N),
    entry(3, "close", OpKind::Close, CLOSES_FD, NP, 0),
    entry(16, "ioctl", OpKind::Ioctl, IOCTL, NP, 0),
    entry(17, "pread64", OpKind::Read, 0, NP, 0),
    entry(18, "pwrite64", OpKind::Write, 0, NP, 0),
    entry(19, "readv", OpKind::Read, 0, NP, 0),
    entry(20, "writev", OpKind::Write, 0, NP, 0),
    entry(32, "dup", OpKind::Dup, DUPLICATES_FD, NP, 0),
    entry(33, "dup2", OpKind::Dup, DUPLICATES_FD, NP, 0),
    entry(74, "fsync", OpKind::Fsync, 0, NP, 0),
    entry(75, "fdatasync", OpKind::Fsync, 0, NP, 0),
    entry(76, "truncate", OpKind::Truncate, 0, P0, N),
    entry(77, "ftruncate", OpKind::Truncate, 0, NP, 0),
    entry(80, "chdir", OpKind::Chdir, SETS_CWD, P0, N),
    entry(81, "fchdir", OpKind::Chdir, SETS_CWD, NP, 0),
    entry(82, "rename", OpKind::Rename, 0, [0, N, 1, N], N),
    entry(83, "mkdir", OpKind::Mkdir, 0, P0, N),
    entry(84, "rmdir", OpKind::Rmdir, 0, P0, N),
    entry(85, "creat", OpKind::Open, RET_IS_NEW_FD, P0, N),
    entry(86, "link", OpKind::Link, 0, [0, N, 1, N], N),
    entry(87, "unlink", OpKind::Unlink, 0, P0, N),
    // symlink(target, linkpath): path 1 is the new link, path 2 the target text.
    entry(88, "symlink", OpKind::Symlink, PATH2_IS_TEXT, [1, N, 0, N], N),
    entry(90, "chmod", OpKind::Chmod, 0, P0, N),
    entry(91, "fchmod", OpKind::Chmod, 0, NP, 0),
    entry(92, "chown", OpKind::Chown, 0, P0, N),
    entry(93, "fchown", OpKind::Chown, 0, NP, 0),
    entry(94, "lchown", OpKind::Chown, 0, P0, N),
    // mount(source, target, fstype, flags, data): path 1 is the mount point, path 2 the source.
    entry(165, "mount", OpKind::Mount, PATH2_IS_TEXT, [1, N, 0, N], N),
    entry(166, "umount", OpKind::Umount, 0, P0, N),
    entry(188, "setxattr", OpKind::SetXattr, PATH2_IS_TEXT, [0, N, 1, N], N),
    entry(189, "lsetxattr", OpKind::SetXattr, PATH2_IS_TEXT, [0, N, 1, N], N),
    entry(190, "fsetxattr", OpKind::SetXattr, PATH2_IS_TEXT, [N, N, 1, N], 0),
    entry(197, "removexattr", OpKind::RemoveXattr, PATH2_IS_TEXT, [0, N, 1, N], N),
    entry(198, "lremovexattr", OpKind::RemoveXattr, PATH2_IS_TEXT, [0, N, 1, N], N),
    entry(199, "fremovexattr", OpKind::RemoveXattr, PATH2_IS_TEXT, [N, N, 1, N], 0),
    entry(257, "openat", OpKind::Open, RET_IS_NEW_FD, P1D0, N),
    entry(258, "mkdirat", OpKind::Mkdir, 0, P1D0, N),
    entry(260, "fchownat", OpKind::Chown, 0, P1D0, N),
    // unlinkat with AT_REMOVEDIR is an rmdir; userspace decides from the flags argument.
    entry(263, "unlinkat", OpKind::Unlink, 0, P1D0, N),
    entry(264, "renameat", OpKind::Rename, 0, [1, 0, 3, 2], N),
    entry(265, "linkat", OpKind::Link, 0, [1, 0, 3, 2], N),
    // symlinkat(target, newdirfd, linkpath)
    entry(266, "symlinkat", OpKind::Symlink, PATH2_IS_TEXT, [2, 1, 0, N], N),
    entry(268, "fchmodat", OpKind::Chmod, 0, P1D0, N),
    entry(292, "dup3", OpKind::Dup, DUPLICATES_FD, NP, 0),
    entry(295, "preadv", OpKind::Read, 0, NP, 0),
    entry(296, "pwritev", OpKind::Write, 0, NP, 0),
    entry(316, "renameat2", OpKind::Rename, 0, [1, 0, 3, 2], N),
    entry(327, "preadv2", OpKind::Read, 0, NP, 0),
    entry(328, "pwritev2", OpKind::Write, 0, NP, 0),
    entry(437, "openat2", OpKind::Open, RET_IS_NEW_FD, P1D0, N),
    entry(452, "fchmodat2", OpKind::Chmod, 0, P1D0, N),
    // setxattrat(dfd, path, at_flags, name, args, size), removexattrat(dfd, path, at_flags, name)
    entry(463, "setxattrat", OpKind::SetXattr, PATH2_IS_TEXT, [1, 0, 3, N], N),
    entry(466, "removexattrat", OpKind::RemoveXattr, PATH2_IS_TEXT, [1, 0, 3, N], N),
];

/// Looks a syscall up by number.
#[must_use]
pub fn syscall_by_nr(nr: u32) -> Option<&'static SyscallEntry> {
    SYSCALLS.iter().find(|entry| entry.nr == nr)
}
