//! Answers "is this watched?" for an fd, a cwd or a path, from the scope maps.

use aya_ebpf::helpers::bpf_probe_read_kernel_buf;
use vexevent_common::{PATH_BUF, PREFIX_KEY_BYTES, ProbeConfig, fd_scope_key};

use aya_ebpf::maps::LruHashMap;

use crate::maps::{CWD_SCOPE, FD_SCOPE, PREFIX_SCRATCH, WATCH_PREFIXES};

/// `AT_FDCWD`.
const AT_FDCWD: i32 = -100;

// Scope entries hold 1 (watched) or 0 (not): an existing entry is flipped in place, which costs a
// store, where insert and delete would each cost a map update on every open and close.

/// Scope flag values: not watched, watched, watched `VexFS` special file (its writes' data is
/// captured).
pub const NOT_WATCHED: u8 = 0;
pub const WATCHED: u8 = 1;
pub const VEXFS_SPECIAL: u8 = 2;

#[inline(always)]
fn flag<K>(map: &LruHashMap<K, u8>, key: K) -> u8 {
    // SAFETY: a map value read; a racing flip only makes the answer one event early or late.
    map.get_ptr(key).map_or(NOT_WATCHED, |flag| unsafe { *flag })
}

#[inline(always)]
fn flag_store<K>(map: &LruHashMap<K, u8>, key: K, value: u8) {
    if let Some(flag) = map.get_ptr_mut(&key) {
        // SAFETY: a map value of this process's fd or cwd.
        unsafe { *flag = value };
    } else if value != NOT_WATCHED {
        let _ = map.insert(key, value, 0);
    }
}

#[inline(always)]
pub fn fd_flag(tgid: u32, fd: u64) -> u8 {
    flag(&FD_SCOPE, fd_scope_key(tgid, fd as u32))
}

#[inline(always)]
pub fn fd_in_scope(tgid: u32, fd: u64) -> bool {
    fd_flag(tgid, fd) != NOT_WATCHED
}

#[inline(always)]
pub fn mark_fd(tgid: u32, fd: u64, value: u8) {
    flag_store(&FD_SCOPE, fd_scope_key(tgid, fd as u32), value);
}

#[inline(always)]
pub fn cwd_in_scope(tgid: u32) -> bool {
    flag(&CWD_SCOPE, tgid) != NOT_WATCHED
}

#[inline(always)]
pub fn mark_cwd(tgid: u32, watched: bool) {
    flag_store(&CWD_SCOPE, tgid, if watched { WATCHED } else { NOT_WATCHED });
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
