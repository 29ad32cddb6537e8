//! Submitting records: picks the shard's ring, writes pending gap records first, counts every
//! record the ring cannot take (by kind, and as a pending gap for the next record to report,
//! with the span of the lost records' timestamps), and wakes the consumer only while it sleeps
//! (it drains on its own timer while records keep coming) or when a ring fills past a threshold.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, generated::bpf_ringbuf_output},
    maps::RingBuf,
};
use aya_log_ebpf::warn;
use vexevent_common::{
    GAP_KINDS, GAP_OP, GAP_RECORD_SIZE, GapBody, KernelStat, MAX_SHARDS, NOT_A_SYSCALL, RecordBuf,
};

use crate::{
    maps::{
        CONFIG, CONSUMER_POLLING, EVENTS_0, EVENTS_1, EVENTS_2, EVENTS_3, EVENTS_4, EVENTS_5, EVENTS_6,
        EVENTS_7, GAP_SCRATCH, LOST_BY_KIND, PENDING_LOSS, count, next_seq,
    },
    record::{Task, header},
};

/// Wake the consumer once this many bytes wait in a ring, even mid-batch.
const WAKEUP_THRESHOLD_BYTES: u64 = 1 << 20;

#[inline(always)]
fn ring(shard: u32) -> &'static RingBuf {
    match shard as usize % MAX_SHARDS {
        0 => &EVENTS_0,
        1 => &EVENTS_1,
        2 => &EVENTS_2,
        3 => &EVENTS_3,
        4 => &EVENTS_4,
        5 => &EVENTS_5,
        6 => &EVENTS_6,
        _ => &EVENTS_7,
    }
}

/// Writes `size` bytes at `data` to a ring; false when the ring is full.
#[inline(always)]
fn write(ring: &RingBuf, data: *const u8, size: usize) -> bool {
    let waiting = ring.query(u64::from(BPF_RB_AVAIL_DATA));
    // While records keep coming the consumer drains on its own timer and is not woken (a wakeup
    // costs this task an interrupt and pulls the consumer onto this CPU); it is woken when it
    // sleeps (nothing came for a while) or when a burst fills the ring.
    let polling = CONSUMER_POLLING.get(0).is_some_and(|polling| *polling != 0);
    let wake =
        !polling || (waiting < WAKEUP_THRESHOLD_BYTES && waiting + size as u64 >= WAKEUP_THRESHOLD_BYTES);
    let flags = if wake { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    // SAFETY: `data` points to at least `size` readable bytes of a map value.
    let written = unsafe {
        bpf_ringbuf_output(
            core::ptr::from_ref(ring).cast_mut().cast(),
            data.cast_mut().cast(),
            size as u64,
            u64::from(flags),
        )
    };
    written == 0
}

/// Writes the CPU's pending gap record, if any; true when nothing is left pending.
#[inline(always)]
fn flush_pending_loss(ring: &RingBuf, cpu: u32) -> bool {
    let Some(pending) = PENDING_LOSS.get_ptr_mut(0) else { return true };
    // SAFETY: this CPU's slot; preemption is disabled while the probe runs.
    let pending = unsafe { &mut *pending };
    if pending.total == 0 {
        return true;
    }
    let Some(gap) = GAP_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's scratch slot.
    let gap = unsafe { &mut *gap };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    gap.header = header(GAP_OP, NOT_A_SYSCALL, &Task::NONE, now, now, 0);
    gap.header.seq = pending.first_seq;
    gap.header.cpu = cpu;
    gap.body.gap =
        GapBody { lost: pending.total, lost_from_ns: pending.first_ns, lost_to_ns: pending.last_ns };
    gap.by_kind = pending.by_kind;
    if !write(ring, core::ptr::from_ref(gap).cast(), GAP_RECORD_SIZE) {
        return false;
    }
    pending.total = 0;
    pending.by_kind = [0; GAP_KINDS];
    true
}

/// Notes a record (sequence `seq`, kind `op`, timestamp `ns`) the ring could not take.
#[inline(always)]
fn record_loss(seq: u64, op: u32, ns: u64) {
    count(KernelStat::LostRingFull);
    warn!(&(), "ring full: record {} (kind {}) lost", seq, op);
    // A compare the verifier can follow (it cannot bound a modulo).
    let kind = if op < GAP_KINDS as u32 { op } else { 0 };
    if let Some(lost) = LOST_BY_KIND.get_ptr_mut(kind) {
        // SAFETY: this CPU's slot.
        unsafe { *lost += 1 };
    }
    if let Some(pending) = PENDING_LOSS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        let pending = unsafe { &mut *pending };
        if pending.total == 0 {
            pending.first_seq = seq;
            pending.first_ns = ns;
        }
        pending.last_ns = ns;
        pending.total += 1;
        if let Some(slot) = pending.by_kind.get_mut(kind as usize) {
            *slot += 1;
        }
    }
}

/// Stamps a record with this CPU and its next sequence number, then submits its first `size`
/// bytes to the CPU's shard. Stamping here, right before the write, is what makes a gap in a
/// CPU's sequence mean exactly "records this CPU could not write".
#[inline(always)]
pub fn submit(record: &mut RecordBuf, size: usize) {
    // SAFETY: no preconditions.
    record.header.cpu = unsafe { bpf_get_smp_processor_id() };
    record.header.seq = next_seq();
    let header = &record.header;
    let shard = match CONFIG.get(0) {
        Some(config) if config.shard_count > 0 && config.cpus_per_shard > 0 => {
            (header.cpu / config.cpus_per_shard) % config.shard_count
        }
        _ => 0,
    };
    let ring = ring(shard);
    // A gap is reported before any later record of this CPU, so the stream says where it was.
    if flush_pending_loss(ring, header.cpu) && write(ring, core::ptr::from_ref(record).cast(), size) {
        count(KernelStat::Emitted);
    } else {
        record_loss(header.seq, header.op, header.exit_ns);
    }
}
