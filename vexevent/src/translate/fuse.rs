//! FUSE requests seen in the kernel: opcode names, and the `VexFS` event type each opcode stands
//! for (design/vexfs.md, "FUSE opcode to semantic type").

use vexevent_common::{FUSE_OPCODE_NAMES, FuseBody, fuse_opcode as op};

use crate::{
    capture::RawRecord,
    event::{EventType, FuseRequest, PathBytes},
};

/// An opcode's name (`CREATE`), or `OPCODE_<n>`.
#[must_use]
pub fn opcode_name(opcode: u32) -> String {
    FUSE_OPCODE_NAMES
        .iter()
        .find(|(code, _)| *code == opcode)
        .map_or_else(|| format!("OPCODE_{opcode}"), |(_, name)| (*name).to_owned())
}

/// The event type a request stands for on its own, and whether it is metadata traffic
/// (lookups, attribute reads, flushes) that standalone output leaves out unless asked.
#[must_use]
pub fn opcode_event_type(opcode: u32) -> (EventType, bool) {
    match opcode {
        op::CREATE | op::MKNOD | op::TMPFILE => (EventType::FilesystemCreate, false),
        op::UNLINK => (EventType::FilesystemDelete, false),
        op::READ | op::READDIR | op::READDIRPLUS | op::OPEN | op::OPENDIR | op::RELEASE | op::RELEASEDIR => {
            (EventType::FilesystemRead, false)
        }
        op::WRITE | op::FALLOCATE | op::COPY_FILE_RANGE | op::SETATTR | op::SETXATTR | op::REMOVEXATTR => {
            (EventType::FilesystemWrite, false)
        }
        op::RENAME | op::RENAME2 => (EventType::FilesystemRename, false),
        op::MKDIR => (EventType::FilesystemMkdir, false),
        op::RMDIR => (EventType::FilesystemRmdir, false),
        op::SYMLINK => (EventType::FilesystemSymlink, false),
        op::LINK => (EventType::FilesystemHardlink, false),
        op::FSYNC | op::FSYNCDIR | op::SYNCFS => (EventType::SystemSync, false),
        op::INIT => (EventType::SystemMount, false),
        op::DESTROY => (EventType::SystemUnmount, false),
        op::FLUSH => (EventType::SystemSync, true),
        _ => (EventType::FilesystemRead, true),
    }
}

/// The request a `FuseRequest` record describes.
#[must_use]
pub fn request_of(record: &RawRecord, body: &FuseBody) -> FuseRequest {
    let header = &record.header;
    let side = &body.daemon;
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
        connection: body.connection,
        unique: body.unique,
        opcode: body.opcode,
        opcode_name: opcode_name(body.opcode),
        requester_pid: header.pid,
        requester_tid: header.tid,
        daemon_pid: body.daemon_pid,
        daemon_tid: body.daemon_tid,
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
        assert_eq!(opcode_name(op::CREATE), "CREATE");
        assert_eq!(opcode_name(999), "OPCODE_999");
        assert_eq!(opcode_event_type(op::CREATE), (EventType::FilesystemCreate, false));
        assert_eq!(opcode_event_type(op::LOOKUP), (EventType::FilesystemRead, true), "LOOKUP is metadata");
        assert_eq!(opcode_event_type(op::FLUSH), (EventType::SystemSync, true), "FLUSH fires on every close");
        assert_eq!(opcode_event_type(op::RENAME2).0, EventType::FilesystemRename);
    }
}
