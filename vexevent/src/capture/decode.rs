//! Turns the bytes of one ring-buffer record into a [`RawRecord`], checking every length first.

use vexevent_common::{
    GAP_KINDS, GAP_OP, GAP_RECORD_SIZE, NO_ARG, OpKind, PATH_BUF, RECORD_HEADER_SIZE, RecordHeader,
    SyscallEntry, record_flags, spec_flags, syscall_by_nr,
};

/// What one ring record holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Captured {
    Record(Box<RawRecord>),
    Gap(GapRecord),
}

impl Captured {
    /// `CLOCK_MONOTONIC` time the merge orders by (syscall exit, or when the gap was reported).
    #[must_use]
    pub fn timestamp_ns(&self) -> u64 {
        match self {
            Captured::Record(record) => record.header.exit_ns,
            Captured::Gap(gap) => gap.reported_ns,
        }
    }

    /// CPU that produced it.
    #[must_use]
    pub fn cpu(&self) -> u32 {
        match self {
            Captured::Record(record) => record.header.cpu,
            Captured::Gap(gap) => gap.cpu,
        }
    }
}

/// Records a CPU's ring could not take: sequence numbers `first_seq .. first_seq + count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GapRecord {
    pub cpu: u32,
    pub first_seq: u64,
    pub count: u64,
    /// Lost records by operation kind (non-zero entries only).
    pub by_kind: Vec<(OpKind, u64)>,
    /// When the probe reported the gap (`CLOCK_MONOTONIC`).
    pub reported_ns: u64,
}

/// A validated kernel record: its header and the paths it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    pub header: RecordHeader,
    pub op: OpKind,
    pub path1: Option<Vec<u8>>,
    /// Second path or text (see `text2`).
    pub path2: Option<Vec<u8>>,
    /// Path 2 is text (xattr name, symlink target, mount source), not a path to resolve.
    pub text2: bool,
    /// The first bytes a write wrote (`VexFS` special files only).
    pub payload: Option<Vec<u8>>,
    /// Bytes of the record in the ring.
    pub size: u32,
    /// The syscall's table entry (syscall operations only), looked up once here.
    pub syscall: Option<&'static SyscallEntry>,
}

/// Why a record was rejected. Every rejection is counted under [`DecodeError::reason`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {RECORD_HEADER_SIZE}-byte header")]
    Truncated { len: usize },
    #[error("record has unknown operation kind {op}")]
    UnknownOp { op: u32 },
    #[error("record names syscall {nr}, which is not in the syscall table")]
    UnknownSyscall { nr: u32 },
    #[error("record path length {len} exceeds {PATH_BUF}")]
    PathTooLong { len: u32 },
    #[error("record is {actual} bytes but its header implies {expected}")]
    LengthMismatch { expected: usize, actual: usize },
    #[error("gap record counts {by_kind} lost records by kind but {total} in all")]
    GapMismatch { total: u64, by_kind: u64 },
}

impl DecodeError {
    /// Counter name for this rejection.
    #[must_use]
    pub const fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "decode_truncated",
            DecodeError::UnknownOp { .. } => "decode_unknown_op",
            DecodeError::UnknownSyscall { .. } => "decode_unknown_syscall",
            DecodeError::PathTooLong { .. } => "decode_path_too_long",
            DecodeError::LengthMismatch { .. } => "decode_length_mismatch",
            DecodeError::GapMismatch { .. } => "decode_gap_mismatch",
        }
    }
}

/// Decodes one record.
///
/// # Errors
/// A [`DecodeError`] when the bytes are not a well-formed record.
pub fn decode(bytes: &[u8]) -> Result<Captured, DecodeError> {
    if bytes.len() < RECORD_HEADER_SIZE {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    // SAFETY: the length was checked above; `RecordHeader` is `#[repr(C)]` integers and byte
    // arrays, valid for every bit pattern; `read_unaligned` copes with any alignment.
    let header: RecordHeader = unsafe { bytes.as_ptr().cast::<RecordHeader>().read_unaligned() };
    if header.op == GAP_OP {
        return decode_gap(&header, bytes).map(Captured::Gap);
    }
    decode_record(header, bytes).map(|record| Captured::Record(Box::new(record)))
}

fn decode_gap(header: &RecordHeader, bytes: &[u8]) -> Result<GapRecord, DecodeError> {
    if bytes.len() != GAP_RECORD_SIZE {
        return Err(DecodeError::LengthMismatch { expected: GAP_RECORD_SIZE, actual: bytes.len() });
    }
    let counts = &bytes[RECORD_HEADER_SIZE..];
    let mut by_kind = Vec::new();
    let mut sum = 0u64;
    for (kind, count) in counts.chunks_exact(4).take(GAP_KINDS).enumerate() {
        let count = u64::from(u32::from_ne_bytes([count[0], count[1], count[2], count[3]]));
        if count == 0 {
            continue;
        }
        let kind = u32::try_from(kind).unwrap_or(u32::MAX);
        let op = OpKind::try_from(kind).map_err(|op| DecodeError::UnknownOp { op })?;
        by_kind.push((op, count));
        sum += count;
    }
    let total = header.ret.cast_unsigned();
    if sum != total {
        return Err(DecodeError::GapMismatch { total, by_kind: sum });
    }
    Ok(GapRecord {
        cpu: header.cpu,
        first_seq: header.seq,
        count: total,
        by_kind,
        reported_ns: header.exit_ns,
    })
}

fn decode_record(header: RecordHeader, bytes: &[u8]) -> Result<RawRecord, DecodeError> {
    let op = OpKind::try_from(header.op).map_err(|op| DecodeError::UnknownOp { op })?;
    let syscall = if op.is_syscall() {
        Some(syscall_by_nr(header.syscall_nr).ok_or(DecodeError::UnknownSyscall { nr: header.syscall_nr })?)
    } else {
        None
    };
    let (has_path1, has_path2, text2) = if let Some(entry) = syscall {
        (
            entry.spec.path1_arg != NO_ARG,
            entry.spec.path2_arg != NO_ARG,
            entry.spec.flags & spec_flags::PATH2_IS_TEXT != 0,
        )
    } else if op == OpKind::FuseRequest {
        // The request's names, when the daemon side saw them; never resolved as paths.
        (header.path1_len > 0, header.path2_len > 0, true)
    } else {
        (false, false, false)
    };
    for len in [header.path1_len, header.path2_len] {
        if len as usize >= PATH_BUF {
            return Err(DecodeError::PathTooLong { len });
        }
    }
    let path1_end = RECORD_HEADER_SIZE + header.path1_len as usize;
    let has_payload = header.flags & record_flags::PAYLOAD != 0;
    let expected = if has_path2 || has_payload {
        RECORD_HEADER_SIZE + PATH_BUF + header.path2_len as usize
    } else {
        path1_end
    };
    if bytes.len() != expected {
        return Err(DecodeError::LengthMismatch { expected, actual: bytes.len() });
    }
    let path1 = has_path1.then(|| bytes[RECORD_HEADER_SIZE..path1_end].to_vec());
    let second_slot = || bytes[RECORD_HEADER_SIZE + PATH_BUF..expected].to_vec();
    let path2 = (has_path2 && !has_payload).then(second_slot);
    let payload = has_payload.then(second_slot);
    Ok(RawRecord {
        header,
        op,
        path1,
        path2,
        text2,
        payload,
        size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        syscall,
    })
}

fn header_bytes(header: &RecordHeader) -> Vec<u8> {
    // SAFETY: `RecordHeader` is `#[repr(C)]` plain data without padding bytes (size asserted in
    // vexevent-common), so viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(header).cast::<u8>(), RECORD_HEADER_SIZE) }
        .to_vec()
}

/// Encodes a record the way the probes lay it out (for tests, replay and benchmarks).
#[must_use]
pub fn encode(header: &RecordHeader, path1: &[u8], path2: Option<&[u8]>) -> Vec<u8> {
    let mut header = *header;
    header.path1_len = u32::try_from(path1.len()).unwrap_or(u32::MAX);
    header.path2_len = path2.map_or(0, |p| u32::try_from(p.len()).unwrap_or(u32::MAX));
    let mut bytes = header_bytes(&header);
    bytes.extend_from_slice(path1);
    if let Some(path2) = path2 {
        bytes.resize(RECORD_HEADER_SIZE + PATH_BUF, 0);
        bytes.extend_from_slice(path2);
    }
    bytes
}

/// Encodes a gap record the way the probes lay it out (for tests and replay).
#[must_use]
pub fn encode_gap(header: &RecordHeader, by_kind: &[(OpKind, u32)]) -> Vec<u8> {
    let mut header = *header;
    header.op = GAP_OP;
    header.ret = by_kind.iter().map(|(_, n)| i64::from(*n)).sum();
    let mut counts = [0u32; GAP_KINDS];
    for (op, n) in by_kind {
        counts[*op as usize] += n;
    }
    let mut bytes = header_bytes(&header);
    bytes.extend(counts.iter().flat_map(|n| n.to_ne_bytes()));
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use vexevent_common::{COMM_LEN, IOCTL_ARG_BYTES};

    fn record(captured: Result<Captured, DecodeError>) -> Result<RawRecord, DecodeError> {
        captured.map(|c| match c {
            Captured::Record(r) => *r,
            Captured::Gap(g) => panic!("unexpected gap {g:?}"),
        })
    }

    pub(crate) fn header(nr: u32, op: OpKind) -> RecordHeader {
        RecordHeader {
            seq: 7,
            enter_ns: 1_000,
            exit_ns: 1_500,
            ret: 3,
            pid: 42,
            tid: 43,
            uid: 1000,
            gid: 1000,
            syscall_nr: nr,
            op: op as u32,
            cpu: 1,
            ..RecordHeader::ZEROED
        }
    }

    #[test]
    fn round_trips_one_and_two_paths() {
        let open = encode(&header(257, OpKind::Open), b"/w/file", None);
        let decoded = record(decode(&open)).unwrap();
        assert_eq!(decoded.path1.as_deref(), Some(&b"/w/file"[..]));
        assert_eq!(decoded.path2, None);
        let rename = encode(&header(316, OpKind::Rename), b"a", Some(b"/w/b\xff"));
        let decoded = record(decode(&rename)).unwrap();
        assert_eq!(decoded.path1.as_deref(), Some(&b"a"[..]));
        assert_eq!(decoded.path2.as_deref(), Some(&b"/w/b\xff"[..]));
        assert!(!decoded.text2);
    }

    #[test]
    fn rejects_truncated_and_corrupt_records() {
        let open = encode(&header(257, OpKind::Open), b"/w/file", None);
        assert_eq!(record(decode(&open[..10])), Err(DecodeError::Truncated { len: 10 }));
        assert!(matches!(record(decode(&open[..open.len() - 1])), Err(DecodeError::LengthMismatch { .. })));
        let mut bad_op = header(257, OpKind::Open);
        bad_op.op = 999;
        assert_eq!(record(decode(&encode(&bad_op, b"", None))), Err(DecodeError::UnknownOp { op: 999 }));
        let unknown_nr = header(9999, OpKind::Open);
        assert_eq!(
            record(decode(&encode(&unknown_nr, b"", None))),
            Err(DecodeError::UnknownSyscall { nr: 9999 })
        );
        let too_long = u32::try_from(PATH_BUF).unwrap();
        let mut long = open.clone();
        long[RECORD_HEADER_SIZE - IOCTL_ARG_BYTES - COMM_LEN - 8..][..4]
            .copy_from_slice(&too_long.to_ne_bytes());
        assert_eq!(record(decode(&long)), Err(DecodeError::PathTooLong { len: too_long }));
    }

    #[test]
    fn gap_records_round_trip_and_must_add_up() {
        let bytes = encode_gap(&header(0, OpKind::Open), &[(OpKind::Open, 3), (OpKind::Close, 2)]);
        let Ok(Captured::Gap(gap)) = decode(&bytes) else { panic!("not a gap") };
        assert_eq!((gap.cpu, gap.first_seq, gap.count), (1, 7, 5));
        assert_eq!(gap.by_kind, vec![(OpKind::Open, 3), (OpKind::Close, 2)]);
        let mut corrupt = bytes.clone();
        corrupt[24..32].copy_from_slice(&9i64.to_ne_bytes());
        assert_eq!(decode(&corrupt), Err(DecodeError::GapMismatch { total: 9, by_kind: 5 }));
        assert!(matches!(decode(&bytes[..bytes.len() - 4]), Err(DecodeError::LengthMismatch { .. })));
    }

    #[test]
    fn every_reason_has_a_distinct_name() {
        let errors = [
            DecodeError::Truncated { len: 0 },
            DecodeError::UnknownOp { op: 0 },
            DecodeError::UnknownSyscall { nr: 0 },
            DecodeError::PathTooLong { len: 0 },
            DecodeError::LengthMismatch { expected: 0, actual: 0 },
            DecodeError::GapMismatch { total: 0, by_kind: 0 },
        ];
        let mut names: Vec<_> = errors.iter().map(DecodeError::reason).collect();
        names.dedup();
        assert_eq!(names.len(), errors.len());
    }

    /// Path lengths the fuzzer tries: every valid one and the first invalid ones.
    #[expect(clippy::cast_possible_truncation, reason = "PATH_BUF is 4096")]
    const PATH_LENGTHS: u32 = PATH_BUF as u32 + 2;

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any bytes: a record or a gap whose parts fit the bytes, or an error; never a panic.
        /// Half the inputs carry a header with a known operation and syscall (and path
        /// lengths near the bytes' own), so they get past the first checks.
        #[test]
        fn fuzz_record_decoder(
            mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..RECORD_HEADER_SIZE + 2 * PATH_BUF + 16),
            plausible in proptest::prelude::any::<bool>(),
            entry in proptest::sample::select(vexevent_common::SYSCALLS),
            op in 0..=24u32,
            lengths in (0..PATH_LENGTHS, 0..PATH_LENGTHS),
            flags in proptest::prelude::any::<u8>(),
        ) {
            if plausible && bytes.len() >= RECORD_HEADER_SIZE {
                let mut header = header(entry.nr, OpKind::Open);
                header.op = if op > 0 { op } else { entry.spec.op };
                (header.path1_len, header.path2_len) = lengths;
                header.flags = flags.into();
                bytes[..RECORD_HEADER_SIZE].copy_from_slice(&header_bytes(&header));
            }
            match decode(&bytes) {
                Ok(Captured::Record(record)) => {
                    proptest::prop_assert_eq!(record.size as usize, bytes.len());
                    let held = record.path1.as_ref().map_or(0, Vec::len) + record.path2.as_ref().map_or(0, Vec::len) + record.payload.as_ref().map_or(0, Vec::len);
                    proptest::prop_assert!(held <= bytes.len());
                }
                Ok(Captured::Gap(gap)) => proptest::prop_assert_eq!(gap.count, gap.by_kind.iter().map(|(_, n)| n).sum::<u64>()),
                Err(error) => { let _ = error.reason(); }
            }
        }
    }
}
