//! FUSE requests seen in the kernel: opcode names, and the `VexFS` event type each opcode stands
//! for (design/vexfs.md, "FUSE opcode to semantic type").

use vexevent_common::{FuseDaemonSide, fuse_args};

use crate::{
    capture::RawRecord,
    event::{EventType, FuseRequest, PathBytes},
};

/// The kernel's FUSE opcodes we name (include/uapi/linux/fuse.h).
const OPCODES: &[(u32, &str)] = &[
    (1, "LOOKUP"),
    (2, "FORGET"),
    (3, "GETATTR"),
    (4, "SETATTR"),
    (5, "READLINK"),
    (6, "SYMLINK"),
    (8, "MKNOD"),
    (9, "MKDIR"),
    (10, "UNLINK"),
    (11, "RMDIR"),
    (12, "RENAME"),
    (13, "LINK"),
    (14, "OPEN"),
    (15, "READ"),
    (16, "WRITE"),
    (17, "STATFS"),
    (18, "RELEASE"),
    (20, "FSYNC"),
    (21, "SETXATTR"),
    (22, "GETXATTR"),
    (23, "LISTXATTR"),
    (24, "REMOVEXATTR"),
    (25, "FLUSH"),
    (26, "INIT"),
    (27, "OPENDIR"),
    (28, "READDIR"),
    (29, "RELEASEDIR"),
    (30, "FSYNCDIR"),
    (31, "GETLK"),
    (32, "SETLK"),
    (33, "SETLKW"),
    (34, "ACCESS"),
    (35, "CREATE"),
    (36, "INTERRUPT"),
    (37, "BMAP"),
    (38, "DESTROY"),
    (39, "IOCTL"),
    (40, "POLL"),
    (41, "NOTIFY_REPLY"),
    (42, "BATCH_FORGET"),
    (43, "FALLOCATE"),
    (44, "READDIRPLUS"),
    (45, "RENAME2"),
    (46, "LSEEK"),
    (47, "COPY_FILE_RANGE"),
    (48, "SETUPMAPPING"),
    (49, "REMOVEMAPPING"),
    (50, "SYNCFS"),
    (51, "TMPFILE"),
    (52, "STATX"),
];

/// An opcode's name (`CREATE`), or `OPCODE_<n>`.
#[must_use]
pub fn opcode_name(opcode: u32) -> String {
    OPCODES
        .iter()
        .find(|(code, _)| *code == opcode)
        .map_or_else(|| format!("OPCODE_{opcode}"), |(_, name)| (*name).to_owned())
}

/// The event type a request stands for on its own, and whether it is metadata traffic
/// (lookups, attribute reads, flushes) that standalone output leaves out unless asked.
#[must_use]
pub fn opcode_event_type(opcode: u32) -> (EventType, bool) {
    match opcode {
        35 | 8 | 51 => (EventType::FilesystemCreate, false),
        10 => (EventType::FilesystemDelete, false),
        15 | 28 | 44 | 14 | 27 | 18 | 29 => (EventType::FilesystemRead, false),
        16 | 43 | 47 | 4 | 21 | 24 => (EventType::FilesystemWrite, false),
        12 | 45 => (EventType::FilesystemRename, false),
        9 => (EventType::FilesystemMkdir, false),
        11 => (EventType::FilesystemRmdir, false),
        6 => (EventType::FilesystemSymlink, false),
        13 => (EventType::FilesystemHardlink, false),
        20 | 30 | 50 => (EventType::SystemSync, false),
        26 => (EventType::SystemMount, false),
        38 => (EventType::SystemUnmount, false),
        25 => (EventType::SystemSync, true),
        _ => (EventType::FilesystemRead, true),
    }
}

/// `FUSE_SYMLINK`: its second name is the link's target.
pub const SYMLINK_OPCODE: u32 = 6;

/// Opcodes that name an entry of the directory node they are about.
#[must_use]
pub fn names_child(opcode: u32) -> bool {
    matches!(opcode, 1 | 6 | 8 | 9 | 10 | 11 | 12 | 13 | 35 | 45)
}

/// Whether an opcode is a rename.
#[must_use]
pub fn is_rename(opcode: u32) -> bool {
    matches!(opcode, 12 | 45)
}

/// The request a `FuseRequest` record describes.
#[must_use]
pub fn request_of(record: &RawRecord) -> FuseRequest {
    let header = &record.header;
    let daemon = header.args[fuse_args::DAEMON];
    let opcode = u32::try_from(header.args[fuse_args::OPCODE]).unwrap_or(u32::MAX);
    // SAFETY: `ioctl_arg` holds a `FuseDaemonSide` in FUSE records (vexevent-common asserts it
    // fits); it is plain integers, valid for every bit pattern, read unaligned.
    let side: FuseDaemonSide = unsafe { header.ioctl_arg.as_ptr().cast::<FuseDaemonSide>().read_unaligned() };
    let seen = |ns: u64| (ns != 0).then_some(ns);
    FuseRequest {
        daemon_received_ns: seen(side.received_ns),
        daemon_replied_ns: seen(side.replied_ns),
        nodeid: (side.received_ns != 0).then_some(side.nodeid),
        entry_nodeid: seen(side.reply_nodeid),
        aux_nodeid: seen(side.aux_nodeid),
        name: record.path1.as_deref().map(PathBytes::from),
        second_name: record.path2.as_deref().map(PathBytes::from),
        daemon_functions_ns: (side.function_calls > 0).then_some(side.functions_ns),
        daemon_function_calls: (side.function_calls > 0).then_some(side.function_calls),
        connection: u32::try_from(header.args[fuse_args::CONNECTION]).unwrap_or(u32::MAX),
        unique: header.args[fuse_args::UNIQUE],
        opcode,
        opcode_name: opcode_name(opcode),
        requester_pid: header.pid,
        requester_tid: header.tid,
        daemon_pid: u32::try_from(daemon >> 32).unwrap_or(u32::MAX),
        daemon_tid: u32::try_from(daemon & 0xffff_ffff).unwrap_or(u32::MAX),
        queued_ns: header.enter_ns,
        ended_ns: header.exit_ns,
        error: i32::try_from(header.ret).unwrap_or(i32::MIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_maps_opcodes_as_vexfs_does() {
        assert_eq!(opcode_name(35), "CREATE");
        assert_eq!(opcode_name(999), "OPCODE_999");
        assert_eq!(opcode_event_type(35), (EventType::FilesystemCreate, false));
        assert_eq!(opcode_event_type(1), (EventType::FilesystemRead, true), "LOOKUP is metadata");
        assert_eq!(opcode_event_type(25), (EventType::SystemSync, true), "FLUSH fires on every close");
        assert_eq!(opcode_event_type(45).0, EventType::FilesystemRename);
    }
}
