//! Turns the bytes of one ring-buffer record into a [`RawRecord`], checking every length first,
//! and its kind-specific body into a typed [`Body`]: a syscall's arguments by meaning (from the
//! syscall table's positions), a FUSE request's fields, a fork's child, a gap's span.

use vexevent_common::{
    ForkBody, FuseBody, GAP_KINDS, GAP_OP, GAP_RECORD_SIZE, GapBody, IOCTL_ARG_BYTES, KERNEL_TEXT_BYTES,
    KernelBody, NO_ARG, NOT_A_SYSCALL, OpKind, OpenFile, PATH_BUF, RECORD_HEADER_SIZE, RECORD_PATHS_OFFSET,
    RecordBody, RecordHeader, SYSCALL_ARGS, SyscallBody, SyscallEntry, SyscallSpec, record_flags, spec_flags,
    syscall_by_nr,
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
    /// Timestamp (`exit_ns`, the merge's order) of the first lost record.
    pub lost_from_ns: u64,
    /// Timestamp of the last lost record.
    pub lost_to_ns: u64,
}

/// A syscall's arguments by meaning, decoded at the positions its table entry gives (`None`:
/// the syscall has no such argument).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallArgs {
    /// The fd the operation acts on.
    pub fd: Option<i32>,
    /// The directory fds paths 1 and 2 are relative to (`AT_FDCWD` or none: the cwd).
    pub dirfd1: Option<i32>,
    pub dirfd2: Option<i32>,
    /// The `O_*` flags of an open (creat: `O_CREAT | O_WRONLY | O_TRUNC`).
    pub open_flags: Option<u64>,
    /// Mode bits.
    pub mode: Option<u32>,
    /// File offset (pread/pwrite family).
    pub offset: Option<u64>,
    /// New size (truncate).
    pub size: Option<u64>,
    /// New owner ids; `None` also for -1 ("leave unchanged").
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `AT_*` flags.
    pub at_flags: Option<u64>,
    /// A `VexFS` ioctl's command and the start of its argument struct.
    pub ioctl: Option<IoctlCall>,
    /// The key of the open file the syscall acted on or made ([`OpenFile::key`]): the same for
    /// every fd, in any process, that shares it.
    pub file_key: Option<u64>,
    /// What the kernel said of the file a successful open made (on kernels whose BTF gave the
    /// offsets).
    pub opened: Option<OpenedFile>,
}

/// A file an open made, as the kernel described it at the syscall's exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenedFile {
    pub inode: u64,
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// The open created the file (`FMODE_CREATED`).
    pub created: bool,
}

/// An ioctl as captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoctlCall {
    pub cmd: u64,
    /// The first `IOCTL_ARG_BYTES` of the argument struct (None: it could not be read).
    pub arg: Option<[u8; IOCTL_ARG_BYTES]>,
}

/// The kind-specific part of an operation record, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Syscall(SyscallArgs),
    Fuse(FuseBody),
    Fork(ForkBody),
    /// A tracepoint or kernel function attached by name; its texts are the record's paths.
    Kernel(KernelBody),
}

/// A validated kernel record: its header and the paths it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    pub header: RecordHeader,
    pub op: OpKind,
    pub body: Body,
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

impl RawRecord {
    /// A syscall record's arguments by meaning.
    #[must_use]
    pub fn args(&self) -> Option<&SyscallArgs> {
        match &self.body {
            Body::Syscall(args) => Some(args),
            Body::Fuse(_) | Body::Fork(_) | Body::Kernel(_) => None,
        }
    }
}

/// Why a record was rejected. Every rejection is counted under [`DecodeError::reason`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {RECORD_PATHS_OFFSET}-byte header and body")]
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
    #[error("gap record's lost span ends ({to_ns}) before it starts ({from_ns})")]
    GapSpan { from_ns: u64, to_ns: u64 },
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
            DecodeError::GapSpan { .. } => "decode_gap_span",
        }
    }
}

/// Decodes one record.
///
/// # Errors
/// A [`DecodeError`] when the bytes are not a well-formed record.
pub fn decode(bytes: &[u8]) -> Result<Captured, DecodeError> {
    if bytes.len() < RECORD_PATHS_OFFSET {
        return Err(DecodeError::Truncated { len: bytes.len() });
    }
    // SAFETY: the length was checked above; `RecordHeader` is `#[repr(C)]` integers and byte
    // arrays, valid for every bit pattern; `read_unaligned` copes with any alignment.
    let header: RecordHeader = unsafe { bytes.as_ptr().cast::<RecordHeader>().read_unaligned() };
    // SAFETY: as above: the body follows the header, checked to be there; every variant of the
    // union is plain integers, valid for every bit pattern.
    let body: RecordBody =
        unsafe { bytes.as_ptr().add(RECORD_HEADER_SIZE).cast::<RecordBody>().read_unaligned() };
    if header.op == GAP_OP {
        // SAFETY: a gap record's body is its `GapBody` (any bit pattern is valid anyway).
        let gap = unsafe { body.gap };
        return decode_gap(&header, &gap, bytes).map(Captured::Gap);
    }
    decode_record(header, &body, bytes).map(|record| Captured::Record(Box::new(record)))
}

fn decode_gap(header: &RecordHeader, body: &GapBody, bytes: &[u8]) -> Result<GapRecord, DecodeError> {
    if bytes.len() != GAP_RECORD_SIZE {
        return Err(DecodeError::LengthMismatch { expected: GAP_RECORD_SIZE, actual: bytes.len() });
    }
    let counts = &bytes[RECORD_PATHS_OFFSET..];
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
    let total = body.lost;
    if sum != total {
        return Err(DecodeError::GapMismatch { total, by_kind: sum });
    }
    if body.lost_to_ns < body.lost_from_ns {
        return Err(DecodeError::GapSpan { from_ns: body.lost_from_ns, to_ns: body.lost_to_ns });
    }
    Ok(GapRecord {
        cpu: header.cpu,
        first_seq: header.seq,
        count: total,
        by_kind,
        reported_ns: header.exit_ns,
        lost_from_ns: body.lost_from_ns,
        lost_to_ns: body.lost_to_ns,
    })
}

/// The C `int` in a 64-bit syscall register: its low 32 bits.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "C int ABI: the low half is the value"
)]
const fn low_int(value: u64) -> i32 {
    value as u32 as i32
}

/// A syscall's arguments by meaning, from the raw arguments and its table entry.
fn syscall_args(spec: &SyscallSpec, body: &SyscallBody, flags: u32) -> SyscallArgs {
    let raw = |index: u8| (index != NO_ARG).then(|| body.args.get(usize::from(index)).copied()).flatten();
    let int = |index: u8| raw(index).map(low_int);
    // -1 means "leave unchanged".
    let id = |index: u8| int(index).filter(|id| *id != -1).map(i32::cast_unsigned);
    let open_flags = if spec.flags & spec_flags::IMPLIES_CREATE != 0 {
        Some((libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC).cast_unsigned().into())
    } else {
        raw(spec.open_flags_arg)
    };
    let ioctl = raw(spec.cmd_arg).map(|cmd| IoctlCall {
        cmd,
        arg: (flags & record_flags::IOCTL_ARG_VALID != 0).then_some(body.ioctl_arg),
    });
    SyscallArgs {
        fd: int(spec.fd_arg),
        dirfd1: int(spec.dirfd1_arg),
        dirfd2: int(spec.dirfd2_arg),
        open_flags,
        mode: int(spec.mode_arg).map(i32::cast_unsigned),
        offset: raw(spec.offset_arg),
        size: raw(spec.size_arg),
        uid: id(spec.uid_arg),
        gid: id(spec.gid_arg),
        at_flags: raw(spec.at_flags_arg),
        ioctl,
        file_key: (body.file.key != 0).then_some(body.file.key),
        opened: (flags & record_flags::FILE_INFO != 0).then_some(OpenedFile {
            inode: body.file.inode,
            mode: body.file.mode,
            created: flags & record_flags::FILE_CREATED != 0,
        }),
    }
}

fn decode_record(header: RecordHeader, body: &RecordBody, bytes: &[u8]) -> Result<RawRecord, DecodeError> {
    let op = OpKind::try_from(header.op).map_err(|op| DecodeError::UnknownOp { op })?;
    if matches!(op, OpKind::Tracepoint | OpKind::KernelFunction) {
        // SAFETY: the kernel variant is what these kinds' probes write; plain integers.
        return decode_kernel(header, op, unsafe { body.kernel }, bytes);
    }
    let syscall = if op.is_syscall() {
        Some(syscall_by_nr(header.syscall_nr).ok_or(DecodeError::UnknownSyscall { nr: header.syscall_nr })?)
    } else {
        None
    };
    // SAFETY (the three reads): the variant `op` says the probe wrote; every variant is plain
    // integers, valid for every bit pattern.
    let typed = match (op, syscall) {
        (_, Some(entry)) => Body::Syscall(syscall_args(&entry.spec, unsafe { &body.syscall }, header.flags)),
        (OpKind::FuseRequest, None) => Body::Fuse(unsafe { body.fuse }),
        _ => Body::Fork(unsafe { body.fork }),
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
    let path1_end = RECORD_PATHS_OFFSET + header.path1_len as usize;
    let has_payload = header.flags & record_flags::PAYLOAD != 0;
    let expected = if has_path2 || has_payload {
        RECORD_PATHS_OFFSET + PATH_BUF + header.path2_len as usize
    } else {
        path1_end
    };
    if bytes.len() != expected {
        return Err(DecodeError::LengthMismatch { expected, actual: bytes.len() });
    }
    let path1 = has_path1.then(|| bytes[RECORD_PATHS_OFFSET..path1_end].to_vec());
    let second_slot = || bytes[RECORD_PATHS_OFFSET + PATH_BUF..expected].to_vec();
    let path2 = (has_path2 && !has_payload).then(second_slot);
    let payload = has_payload.then(second_slot);
    Ok(RawRecord {
        header,
        op,
        body: typed,
        path1,
        path2,
        text2,
        payload,
        size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        syscall,
    })
}

/// A tracepoint or kernel function record: the body and up to two text slots of
/// `KERNEL_TEXT_BYTES` each (slot 2 right after slot 1's).
fn decode_kernel(
    header: RecordHeader,
    op: OpKind,
    body: KernelBody,
    bytes: &[u8],
) -> Result<RawRecord, DecodeError> {
    for len in [header.path1_len, header.path2_len] {
        if len as usize >= KERNEL_TEXT_BYTES {
            return Err(DecodeError::PathTooLong { len });
        }
    }
    let text1_end = RECORD_PATHS_OFFSET + header.path1_len as usize;
    let expected = if header.path2_len > 0 {
        RECORD_PATHS_OFFSET + KERNEL_TEXT_BYTES + header.path2_len as usize
    } else {
        text1_end
    };
    if bytes.len() != expected {
        return Err(DecodeError::LengthMismatch { expected, actual: bytes.len() });
    }
    let path1 = (header.path1_len > 0).then(|| bytes[RECORD_PATHS_OFFSET..text1_end].to_vec());
    let path2 =
        (header.path2_len > 0).then(|| bytes[RECORD_PATHS_OFFSET + KERNEL_TEXT_BYTES..expected].to_vec());
    Ok(RawRecord {
        header,
        op,
        body: Body::Kernel(body),
        path1,
        path2,
        text2: true,
        payload: None,
        size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        syscall: None,
    })
}

/// Encodes a tracepoint or kernel function record the way the probes lay it out (for tests).
#[must_use]
pub fn encode_kernel(header: &RecordHeader, body: KernelBody, text1: &[u8], text2: Option<&[u8]>) -> Vec<u8> {
    let mut header = *header;
    header.path1_len = u32::try_from(text1.len()).unwrap_or(u32::MAX);
    header.path2_len = text2.map_or(0, |t| u32::try_from(t.len()).unwrap_or(u32::MAX));
    let mut record = RecordBody::ZEROED;
    record.kernel = body;
    let mut bytes = fixed_bytes(&header, &record);
    bytes.extend_from_slice(text1);
    if let Some(text2) = text2 {
        bytes.resize(RECORD_PATHS_OFFSET + KERNEL_TEXT_BYTES, 0);
        bytes.extend_from_slice(text2);
    }
    bytes
}

fn fixed_bytes(header: &RecordHeader, body: &RecordBody) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RECORD_PATHS_OFFSET);
    // SAFETY: `RecordHeader` and `RecordBody` are `#[repr(C)]` plain data without padding bytes
    // (sizes asserted in vexevent-common), so viewing them as bytes is sound.
    unsafe {
        bytes.extend_from_slice(std::slice::from_raw_parts(
            std::ptr::from_ref(header).cast::<u8>(),
            RECORD_HEADER_SIZE,
        ));
        bytes.extend_from_slice(std::slice::from_raw_parts(
            std::ptr::from_ref(body).cast::<u8>(),
            std::mem::size_of::<RecordBody>(),
        ));
    }
    bytes
}

/// The raw body of a syscall record with these arguments (for tests, replay and benchmarks).
#[must_use]
pub fn syscall_body(args: [u64; SYSCALL_ARGS]) -> RecordBody {
    RecordBody { syscall: SyscallBody { args, file: OpenFile::default(), ioctl_arg: [0; IOCTL_ARG_BYTES] } }
}

/// Encodes a record the way the probes lay it out (for tests, replay and benchmarks).
#[must_use]
pub fn encode(header: &RecordHeader, body: &RecordBody, path1: &[u8], path2: Option<&[u8]>) -> Vec<u8> {
    let mut header = *header;
    header.path1_len = u32::try_from(path1.len()).unwrap_or(u32::MAX);
    header.path2_len = path2.map_or(0, |p| u32::try_from(p.len()).unwrap_or(u32::MAX));
    let mut bytes = fixed_bytes(&header, body);
    bytes.extend_from_slice(path1);
    if let Some(path2) = path2 {
        bytes.resize(RECORD_PATHS_OFFSET + PATH_BUF, 0);
        bytes.extend_from_slice(path2);
    }
    bytes
}

/// Encodes a gap record the way the probes lay it out (for tests and replay): the header's `seq`
/// is the first lost record's, `exit_ns` when the gap was reported; the lost records' timestamps
/// spanned `lost_span` (first, last).
#[must_use]
pub fn encode_gap(header: &RecordHeader, lost_span: (u64, u64), by_kind: &[(OpKind, u32)]) -> Vec<u8> {
    let mut header = *header;
    header.op = GAP_OP;
    header.syscall_nr = NOT_A_SYSCALL;
    let mut body = RecordBody::ZEROED;
    body.gap = GapBody {
        lost: by_kind.iter().map(|(_, n)| u64::from(*n)).sum(),
        lost_from_ns: lost_span.0,
        lost_to_ns: lost_span.1,
    };
    let mut counts = [0u32; GAP_KINDS];
    for (op, n) in by_kind {
        counts[*op as usize] += n;
    }
    let mut bytes = fixed_bytes(&header, &body);
    bytes.extend(counts.iter().flat_map(|n| n.to_ne_bytes()));
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn args() -> RecordBody {
        syscall_body([0; SYSCALL_ARGS])
    }

    #[test]
    fn round_trips_one_and_two_paths() {
        let open = encode(&header(257, OpKind::Open), &args(), b"/w/file", None);
        let decoded = record(decode(&open)).unwrap();
        assert_eq!(decoded.path1.as_deref(), Some(&b"/w/file"[..]));
        assert_eq!(decoded.path2, None);
        let rename = encode(&header(316, OpKind::Rename), &args(), b"a", Some(b"/w/b\xff"));
        let decoded = record(decode(&rename)).unwrap();
        assert_eq!(decoded.path1.as_deref(), Some(&b"a"[..]));
        assert_eq!(decoded.path2.as_deref(), Some(&b"/w/b\xff"[..]));
        assert!(!decoded.text2);
    }

    #[test]
    fn decodes_arguments_by_meaning() {
        let flags = u64::from((libc::O_CREAT | libc::O_EXCL).cast_unsigned());
        let openat =
            encode(&header(257, OpKind::Open), &syscall_body([3, 0, flags, 0o640, 0, 0]), b"f", None);
        let Body::Syscall(decoded) = record(decode(&openat)).unwrap().body else { panic!("not a syscall") };
        assert_eq!((decoded.dirfd1, decoded.open_flags, decoded.mode), (Some(3), Some(flags), Some(0o640)));
        assert_eq!((decoded.fd, decoded.offset, decoded.ioctl), (None, None, None));
        let creat = encode(&header(85, OpKind::Open), &syscall_body([0, 0o600, 0, 0, 0, 0]), b"f", None);
        let Body::Syscall(decoded) = record(decode(&creat)).unwrap().body else { panic!("not a syscall") };
        assert!(decoded.open_flags.is_some_and(|f| f & u64::from(libc::O_CREAT.cast_unsigned()) != 0));
        assert_eq!(decoded.mode, Some(0o600));
        let unchanged = u64::from(u32::MAX);
        let fchownat =
            encode(&header(260, OpKind::Chown), &syscall_body([5, 0, 1000, unchanged, 0x100, 0]), b"f", None);
        let Body::Syscall(decoded) = record(decode(&fchownat)).unwrap().body else { panic!("not a syscall") };
        assert_eq!((decoded.uid, decoded.gid, decoded.at_flags), (Some(1000), None, Some(0x100)));
        let mut ioctl = syscall_body([4, 0xC038_560A, 0x7000, 0, 0, 0]);
        // SAFETY: writing the syscall variant's bytes of a zeroed union.
        unsafe { ioctl.syscall.ioctl_arg[8] = 64 };
        let mut ioctl_header = header(16, OpKind::Ioctl);
        ioctl_header.flags = record_flags::IOCTL_ARG_VALID;
        let Body::Syscall(decoded) = record(decode(&encode(&ioctl_header, &ioctl, b"", None))).unwrap().body
        else {
            panic!("not a syscall")
        };
        let call = decoded.ioctl.expect("ioctl");
        assert_eq!((decoded.fd, call.cmd, call.arg.map(|arg| arg[8])), (Some(4), 0xC038_560A, Some(64)));
    }

    #[test]
    fn rejects_truncated_and_corrupt_records() {
        let open = encode(&header(257, OpKind::Open), &args(), b"/w/file", None);
        assert_eq!(record(decode(&open[..10])), Err(DecodeError::Truncated { len: 10 }));
        assert!(matches!(record(decode(&open[..open.len() - 1])), Err(DecodeError::LengthMismatch { .. })));
        let mut bad_op = header(257, OpKind::Open);
        bad_op.op = 999;
        assert_eq!(
            record(decode(&encode(&bad_op, &args(), b"", None))),
            Err(DecodeError::UnknownOp { op: 999 })
        );
        let unknown_nr = header(9999, OpKind::Open);
        assert_eq!(
            record(decode(&encode(&unknown_nr, &args(), b"", None))),
            Err(DecodeError::UnknownSyscall { nr: 9999 })
        );
        let too_long = u32::try_from(PATH_BUF).unwrap();
        let mut long = open.clone();
        long[std::mem::offset_of!(RecordHeader, path1_len)..][..4].copy_from_slice(&too_long.to_ne_bytes());
        assert_eq!(record(decode(&long)), Err(DecodeError::PathTooLong { len: too_long }));
    }

    #[test]
    fn gap_records_round_trip_and_must_add_up() {
        let bytes =
            encode_gap(&header(0, OpKind::Open), (900, 1_400), &[(OpKind::Open, 3), (OpKind::Close, 2)]);
        let Ok(Captured::Gap(gap)) = decode(&bytes) else { panic!("not a gap") };
        assert_eq!((gap.cpu, gap.first_seq, gap.count), (1, 7, 5));
        assert_eq!(gap.by_kind, vec![(OpKind::Open, 3), (OpKind::Close, 2)]);
        assert_eq!((gap.lost_from_ns, gap.lost_to_ns, gap.reported_ns), (900, 1_400, 1_500));
        let lost_at = RECORD_HEADER_SIZE + std::mem::offset_of!(GapBody, lost);
        let mut corrupt = bytes.clone();
        corrupt[lost_at..lost_at + 8].copy_from_slice(&9u64.to_ne_bytes());
        assert_eq!(decode(&corrupt), Err(DecodeError::GapMismatch { total: 9, by_kind: 5 }));
        assert!(matches!(decode(&bytes[..bytes.len() - 4]), Err(DecodeError::LengthMismatch { .. })));
        let backwards = encode_gap(&header(0, OpKind::Open), (1_400, 900), &[(OpKind::Open, 1)]);
        assert_eq!(decode(&backwards), Err(DecodeError::GapSpan { from_ns: 1_400, to_ns: 900 }));
    }

    #[test]
    fn fuse_and_fork_bodies_decode_typed() {
        let mut body = RecordBody::ZEROED;
        body.fuse = FuseBody { connection: 53, opcode: 35, unique: 9, daemon_pid: 77, ..FuseBody::default() };
        let fuse = encode(
            &RecordHeader { syscall_nr: NOT_A_SYSCALL, ..header(0, OpKind::FuseRequest) },
            &body,
            b"n",
            None,
        );
        let decoded = record(decode(&fuse)).unwrap();
        let Body::Fuse(request) = decoded.body else { panic!("not FUSE") };
        assert_eq!((request.connection, request.opcode, request.unique, request.daemon_pid), (53, 35, 9, 77));
        assert_eq!(decoded.path1.as_deref(), Some(&b"n"[..]));
        let mut body = RecordBody::ZEROED;
        body.fork = ForkBody { child_pid: 4321, padding: 0 };
        let fork =
            encode(&RecordHeader { syscall_nr: NOT_A_SYSCALL, ..header(0, OpKind::Fork) }, &body, b"", None);
        assert_eq!(record(decode(&fork)).unwrap().body, Body::Fork(ForkBody { child_pid: 4321, padding: 0 }));
    }

    #[test]
    fn kernel_records_carry_two_text_slots() {
        let body = KernelBody { source: 2, values: [7, 0, 0, 0, 0, 0, 0, 0], ..KernelBody::default() };
        let kernel = RecordHeader { syscall_nr: NOT_A_SYSCALL, ..header(0, OpKind::KernelFunction) };
        let bytes = encode_kernel(&kernel, body, b"d\0c\0", Some(b"name"));
        assert_eq!(bytes.len(), RECORD_PATHS_OFFSET + KERNEL_TEXT_BYTES + 4);
        let decoded = record(decode(&bytes)).unwrap();
        assert_eq!(decoded.body, Body::Kernel(body));
        assert_eq!(
            (decoded.path1.as_deref(), decoded.path2.as_deref()),
            (Some(&b"d\0c\0"[..]), Some(&b"name"[..]))
        );
        assert!(matches!(record(decode(&bytes[..bytes.len() - 1])), Err(DecodeError::LengthMismatch { .. })));
        let one = encode_kernel(&kernel, body, b"", None);
        assert_eq!((one.len(), record(decode(&one)).unwrap().path1), (RECORD_PATHS_OFFSET, None));
        let mut long = one.clone();
        let too_long = u32::try_from(KERNEL_TEXT_BYTES).unwrap();
        long[std::mem::offset_of!(RecordHeader, path2_len)..][..4].copy_from_slice(&too_long.to_ne_bytes());
        assert_eq!(record(decode(&long)), Err(DecodeError::PathTooLong { len: too_long }));
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
            DecodeError::GapSpan { from_ns: 0, to_ns: 0 },
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
                let fixed = fixed_bytes(&header, &RecordBody::ZEROED);
                let n = fixed.len().min(bytes.len());
                bytes[..n].copy_from_slice(&fixed[..n]);
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
