//! FUSE requests, kernel side: `fuse/fuse_request_send` (in the requester's context, when the
//! request is queued for the daemon) and `fuse/fuse_request_end` (in the daemon's context, when
//! its reply arrives), paired by (connection, unique) into one record with both times, the opcode,
//! the error, the requester and the daemon thread. Field offsets come from tracefs via
//! `FUSE_CONFIG`.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_smp_processor_id,
        bpf_ktime_get_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use vexevent_common::{FuseRequestKey, KernelStat, OpKind, RECORD_HEADER_SIZE, fuse_args};

use crate::{
    maps::{CONFIG, FUSE_CONFIG, FUSE_CONNECTIONS, FUSE_INFLIGHT, FuseInflight, SCRATCH, count, next_seq},
    ring::submit,
};

/// `RecordHeader::syscall_nr` of FUSE records (not a syscall).
const NOT_A_SYSCALL: u32 = u32::MAX;

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: the offset is a field of this tracepoint's record, read from its format file.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

#[tracepoint]
pub fn vexevent_fuse_request_send(ctx: TracePointContext) -> u32 {
    let _ = on_send(&ctx);
    0
}

#[tracepoint]
pub fn vexevent_fuse_request_end(ctx: TracePointContext) -> u32 {
    let _ = on_end(&ctx);
    0
}

fn on_send(ctx: &TracePointContext) -> Option<()> {
    let fuse = FUSE_CONFIG.get(0)?;
    let config = CONFIG.get(0)?;
    count(KernelStat::Seen);
    let connection: u32 = read(ctx, fuse.send_connection)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == config.self_pid {
        count(KernelStat::FilteredSelf);
        return None;
    }
    if fuse.watch_all == 0 && FUSE_CONNECTIONS.get_ptr(connection).is_none() {
        count(KernelStat::FuseFilteredConnection);
        return None;
    }
    let key = FuseRequestKey { connection, padding: 0, unique: read(ctx, fuse.send_unique)? };
    let request = FuseInflight {
        opcode: read(ctx, fuse.send_opcode)?,
        len: read(ctx, fuse.send_len)?,
        // SAFETY: no preconditions.
        queued_ns: unsafe { bpf_ktime_get_ns() },
        requester: pid_tgid,
        uid_gid: bpf_get_current_uid_gid(),
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if FUSE_INFLIGHT.insert(key, request, 0).is_err() {
        count(KernelStat::LostInflightFull);
        return None;
    }
    count(KernelStat::FuseRequests);
    Some(())
}

fn on_end(ctx: &TracePointContext) -> Option<()> {
    let fuse = FUSE_CONFIG.get(0)?;
    let key = FuseRequestKey {
        connection: read(ctx, fuse.end_connection)?,
        padding: 0,
        unique: read(ctx, fuse.end_unique)?,
    };
    let Some(request) = FUSE_INFLIGHT.get_ptr(&key) else {
        if fuse.watch_all != 0 || FUSE_CONNECTIONS.get_ptr(key.connection).is_some() {
            count(KernelStat::FuseUnmatchedEnd);
        }
        return None;
    };
    // SAFETY: copied out before the entry is removed.
    let request = unsafe { *request };
    let _ = FUSE_INFLIGHT.remove(&key);
    let error: i32 = read(ctx, fuse.end_error)?;
    let reply_len: u32 = read(ctx, fuse.end_len)?;
    let record = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
    let record = unsafe { &mut *record };
    let header = &mut record.header;
    header.seq = next_seq();
    header.enter_ns = request.queued_ns;
    // SAFETY: no preconditions.
    header.exit_ns = unsafe { bpf_ktime_get_ns() };
    header.ret = i64::from(error);
    header.args = [0; 6];
    header.args[fuse_args::CONNECTION] = u64::from(key.connection);
    header.args[fuse_args::UNIQUE] = key.unique;
    header.args[fuse_args::OPCODE] = u64::from(request.opcode);
    header.args[fuse_args::REQUEST_LEN] = u64::from(request.len);
    header.args[fuse_args::REPLY_LEN] = u64::from(reply_len);
    header.args[fuse_args::DAEMON] = bpf_get_current_pid_tgid();
    header.pid = (request.requester >> 32) as u32;
    header.tid = request.requester as u32;
    header.uid = request.uid_gid as u32;
    header.gid = (request.uid_gid >> 32) as u32;
    header.syscall_nr = NOT_A_SYSCALL;
    header.op = OpKind::FuseRequest as u32;
    header.flags = 0;
    // SAFETY: no preconditions.
    header.cpu = unsafe { bpf_get_smp_processor_id() };
    header.path1_len = 0;
    header.path2_len = 0;
    header.comm = request.comm;
    submit(record, RECORD_HEADER_SIZE);
    Some(())
}
