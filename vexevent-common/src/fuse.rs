//! FUSE opcodes (include/uapi/linux/fuse.h), named once for the probes and userspace, and what
//! the probes need to know about an opcode's request and reply bodies.

/// Declares the opcode constants and their name table from one list.
macro_rules! fuse_opcodes {
    ($($name:ident = $code:literal,)+) => {
        /// The kernel's FUSE opcodes.
        pub mod fuse_opcode {
            $(pub const $name: u32 = $code;)+
        }

        /// Every opcode with its name (`CREATE`), in opcode order.
        pub const FUSE_OPCODE_NAMES: &[(u32, &str)] = &[$(($code, stringify!($name)),)+];
    };
}

fuse_opcodes! {
    LOOKUP = 1,
    FORGET = 2,
    GETATTR = 3,
    SETATTR = 4,
    READLINK = 5,
    SYMLINK = 6,
    MKNOD = 8,
    MKDIR = 9,
    UNLINK = 10,
    RMDIR = 11,
    RENAME = 12,
    LINK = 13,
    OPEN = 14,
    READ = 15,
    WRITE = 16,
    STATFS = 17,
    RELEASE = 18,
    FSYNC = 20,
    SETXATTR = 21,
    GETXATTR = 22,
    LISTXATTR = 23,
    REMOVEXATTR = 24,
    FLUSH = 25,
    INIT = 26,
    OPENDIR = 27,
    READDIR = 28,
    RELEASEDIR = 29,
    FSYNCDIR = 30,
    GETLK = 31,
    SETLK = 32,
    SETLKW = 33,
    ACCESS = 34,
    CREATE = 35,
    INTERRUPT = 36,
    BMAP = 37,
    DESTROY = 38,
    IOCTL = 39,
    POLL = 40,
    NOTIFY_REPLY = 41,
    BATCH_FORGET = 42,
    FALLOCATE = 43,
    READDIRPLUS = 44,
    RENAME2 = 45,
    LSEEK = 46,
    COPY_FILE_RANGE = 47,
    SETUPMAPPING = 48,
    REMOVEMAPPING = 49,
    SYNCFS = 50,
    TMPFILE = 51,
    STATX = 52,
}

use fuse_opcode::{CREATE, LINK, LOOKUP, MKDIR, MKNOD, RENAME, RENAME2, RMDIR, SYMLINK, UNLINK};

/// Where the entry names start in a request body (after the opcode's fixed struct), and whether a
/// second name follows the first; `None` for opcodes without names. Opcodes with names name an
/// entry of the directory node the request is about.
#[inline]
#[must_use]
pub const fn fuse_name_layout(opcode: u32) -> Option<(u64, bool)> {
    match opcode {
        LOOKUP | UNLINK | RMDIR => Some((0, false)),
        // name, target
        SYMLINK => Some((0, true)),
        // MKDIR (mode, umask), LINK (oldnodeid): name
        MKDIR | LINK => Some((8, false)),
        // (mode, rdev/flags, umask, ...): name
        MKNOD | CREATE => Some((16, false)),
        // RENAME (newdir): old name, new name
        RENAME => Some((8, true)),
        // RENAME2 (newdir, flags, padding): old name, new name
        RENAME2 => Some((16, true)),
        _ => None,
    }
}

/// Whether a request body starts with a second node (RENAME's new parent, LINK's old node).
#[inline]
#[must_use]
pub const fn fuse_has_aux_node(opcode: u32) -> bool {
    matches!(opcode, RENAME | LINK | RENAME2)
}

/// Whether a successful reply is a `fuse_entry_out` (it names a node).
#[inline]
#[must_use]
pub const fn fuse_has_entry_reply(opcode: u32) -> bool {
    matches!(opcode, LOOKUP | SYMLINK | MKNOD | MKDIR | LINK | CREATE)
}

/// Whether an opcode is a rename.
#[inline]
#[must_use]
pub const fn fuse_is_rename(opcode: u32) -> bool {
    matches!(opcode, RENAME | RENAME2)
}
