//! Answers "is this watched?" for an fd, a cwd or a path, from the scope maps.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use aya_log_ebpf::warn;
use vexevent_common::{FileLayout, KernelStat, PATH_BUF, PREFIX_KEY_BYTES, ProbeConfig, fd_scope_key};

use crate::maps::{
    CWD_SCOPE, FD_SCOPE, FILE_LAYOUT, FileScope, OpenFd, PREFIX_SCRATCH, SEEDED_FDS, WATCH_PREFIXES, count,
};

/// `AT_FDCWD`.
const AT_FDCWD: i32 = -100;

// An fd's open file or a process's cwd is in its scope map while watched, and leaves it when it
// no longer is: the maps are not LRU maps (an eviction would take a watched file out of scope
// silently), so they hold nothing they do not need, and a full map refuses the insert, counted.

/// Scope flag values: not watched, watched, watched `VexFS` special file (its writes' data is
/// captured).
pub const NOT_WATCHED: u8 = 0;
pub const WATCHED: u8 = 1;
pub const VEXFS_SPECIAL: u8 = 2;

/// A refused insert into a scope map: counted, never silent.
#[inline(always)]
fn inserted(result: Result<(), i32>) {
    if result.is_err() {
        count(KernelStat::ScopeFull);
        warn!(&(), "scope table full: a watched file or cwd is not followed");
    }
}

/// Reads a kernel value at `address` (faults are answered with `None`).
#[inline(always)]
fn kernel<T>(address: u64) -> Option<T> {
    // SAFETY: the helper checks the address and faults safely.
    unsafe { bpf_probe_read_kernel(address as *const T) }.ok()
}

/// `current->files->fdt->fd[fd]`: the open file behind an fd of the current task (`None`: no
/// such fd). The fd table cannot be freed under a tracepoint (RCU).
#[inline(always)]
fn file_of(layout: &FileLayout, fd: u64) -> Option<u64> {
    // SAFETY: no preconditions (the task is only read through the checked helper).
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kernel(task + u64::from(layout.task_files))?;
    let fdt: u64 = kernel(files + u64::from(layout.files_fdt))?;
    let max_fds: u32 = kernel(fdt + u64::from(layout.fdt_max_fds))?;
    // Also refuses negative fds (a huge u64).
    if fd >= u64::from(max_fds) {
        return None;
    }
    let table: u64 = kernel(fdt + u64::from(layout.fdt_fd))?;
    let file: u64 = kernel(table + fd * 8)?;
    (file != 0).then_some(file)
}

/// The `struct inode *` of an open file (0 when unknown).
#[inline(always)]
pub fn file_inode(file: u64) -> u64 {
    match FILE_LAYOUT.get(0) {
        Some(layout) if file != 0 => kernel(file + u64::from(layout.file_inode)).unwrap_or(0),
        _ => 0,
    }
}

/// Where an fd of the current task is in the scope map: its open file's key and address (see
/// `OpenFd`); `None` when the task has no such fd.
#[inline(always)]
pub fn locate_fd(tgid: u32, fd: u64) -> Option<OpenFd> {
    let layout = FILE_LAYOUT.get(0)?;
    let (key, file) = if layout.valid != 0 {
        let file = file_of(layout, fd)?;
        (file, file)
    } else {
        (fd_scope_key(tgid, fd as u32), 0)
    };
    Some(OpenFd { key, file, flag: NOT_WATCHED, padding: [0; 7] })
}

/// An fd of the current task, with its scope: the entry of its open file (dropped when its
/// inode shows it is another file now at the same address), else the mark the start-up scan
/// left on the fd, moved to its open file. `key` 0: no such fd.
#[inline(always)]
pub fn open_fd(tgid: u32, fd: u64) -> OpenFd {
    let Some(mut open) = locate_fd(tgid, fd) else { return OpenFd::default() };
    if let Some(entry) = FD_SCOPE.get_ptr(open.key) {
        // SAFETY: a map value read; a racing flip only makes the answer one event early or late.
        let entry = unsafe { *entry };
        if entry.flag == NOT_WATCHED || entry.inode == file_inode(open.file) {
            open.flag = entry.flag;
            return open;
        }
        let _ = FD_SCOPE.remove(open.key);
        return open;
    }
    if FILE_LAYOUT.get(0).is_some_and(|layout| layout.seeded_fds != 0) {
        let seed = fd_scope_key(tgid, fd as u32);
        if SEEDED_FDS.get_ptr(seed).is_some() {
            let _ = SEEDED_FDS.remove(seed);
            mark_file(&open, file_inode(open.file), WATCHED);
            open.flag = WATCHED;
        }
    }
    open
}

#[inline(always)]
pub fn fd_in_scope(tgid: u32, fd: u64) -> bool {
    open_fd(tgid, fd).flag != NOT_WATCHED
}

/// Sets an open file's scope (`inode`: its `struct inode *`, 0 without BTF offsets).
#[inline(always)]
pub fn mark_file(open: &OpenFd, inode: u64, value: u8) {
    let entry = FD_SCOPE.get_ptr_mut(open.key);
    match (entry, value) {
        (Some(_), NOT_WATCHED) => {
            let _ = FD_SCOPE.remove(open.key);
        }
        // SAFETY: a map value of this open file.
        (Some(entry), _) => unsafe {
            (*entry).flag = value;
            (*entry).inode = inode;
        },
        (None, NOT_WATCHED) => {}
        (None, _) => {
            inserted(FD_SCOPE.insert(open.key, FileScope { inode, flag: value, padding: [0; 7] }, 0));
        }
    }
}

/// An fd of a watched file is being closed: its open file leaves the scope map when this is its
/// last reference (other fds, in this process or others, may still share it).
#[inline(always)]
pub fn forget_if_last(open: &OpenFd) {
    if open.flag == NOT_WATCHED {
        return;
    }
    let last = match FILE_LAYOUT.get(0) {
        Some(layout) if open.file != 0 => {
            kernel::<u64>(open.file + u64::from(layout.file_count)) == Some(u64::from(layout.file_count_one))
        }
        // Keyed by (tgid, fd): the fd itself goes.
        _ => true,
    };
    if last {
        let _ = FD_SCOPE.remove(open.key);
    }
}

#[inline(always)]
pub fn cwd_in_scope(tgid: u32) -> bool {
    CWD_SCOPE.get_ptr(tgid).is_some()
}

#[inline(always)]
pub fn mark_cwd(tgid: u32, watched: bool) {
    match (cwd_in_scope(tgid), watched) {
        (false, true) => inserted(CWD_SCOPE.insert(tgid, WATCHED, 0)),
        (true, false) => {
            let _ = CWD_SCOPE.remove(tgid);
        }
        _ => {}
    }
}

/// Whether a path names a `VexFS` special file whose writes carry meaning (`*.vec`, `*.search`,
/// `.../_vexfs/search`, `.../_vexfs/control`). Looks at the last 16 bytes only.
#[inline(always)]
pub fn is_vexfs_special(path: &[u8; PATH_BUF], len: usize) -> bool {
    const TAIL: usize = 16;
    let start = len.saturating_sub(TAIL);
    let valid = if len >= TAIL { TAIL } else { len };
    let mut tail = [0u8; TAIL];
    // SAFETY: reads 16 bytes at most 4095 + 16 bytes into a buffer of 2 * PATH_BUF (RecordBuf).
    let read = unsafe {
        let from = path.as_ptr().add(start & (PATH_BUF - 1));
        bpf_probe_read_kernel_buf(from, &mut tail)
    };
    if read.is_err() {
        return false;
    }
    let ends_with = |suffix: &[u8]| {
        let k = suffix.len();
        valid >= k && suffix.iter().enumerate().all(|(i, b)| tail[(valid - k + i) & (TAIL - 1)] == *b)
    };
    ends_with(b".vec")
        || ends_with(b".search")
        || ends_with(b"/_vexfs/search")
        || ends_with(b"/_vexfs/control")
}

/// Whether a path (already copied to `path`, NUL-terminated, `len` bytes) is watched. Absolute
/// paths go through the prefix trie; relative ones inherit the scope of their directory fd or of
/// the cwd. `dirfd` is the raw directory-fd argument, `None` when the syscall has none.
#[inline(always)]
pub fn path_in_scope(
    config: &ProbeConfig,
    tgid: u32,
    path: &[u8; PATH_BUF],
    len: usize,
    dirfd: Option<u64>,
) -> bool {
    if config.watch_all != 0 {
        return true;
    }
    if len > 0 && path[0] == b'/' {
        let Some(key) = PREFIX_SCRATCH.get_ptr_mut(0) else {
            return false;
        };
        // SAFETY: this CPU's scratch slot; nothing else uses it while this program runs.
        let key = unsafe { &mut *key };
        key.prefix_len = (PREFIX_KEY_BYTES * 8) as u32;
        // Bytes past the path's NUL are stale but cannot produce a false match: every trie
        // entry ends at a '/' or the NUL, and the path's own NUL sits at `len`.
        // SAFETY: both buffers are at least PREFIX_KEY_BYTES long.
        let copied = unsafe {
            let data = core::ptr::addr_of_mut!(key.data);
            bpf_probe_read_kernel_buf(path.as_ptr(), &mut *data)
        };
        return copied.is_ok() && WATCH_PREFIXES.get(&*key).is_some();
    }
    match dirfd {
        Some(fd) if fd as i32 != AT_FDCWD => fd_in_scope(tgid, fd),
        _ => cwd_in_scope(tgid),
    }
}
