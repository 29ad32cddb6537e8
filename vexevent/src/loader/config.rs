//! `[capture]`: what the kernel probes capture (scope, operations, rings, hooks) and how the
//! capture thread batches; checked whole, then built into the probes' and the drainer's settings
//! with what the filter pushes down to the kernel.

use std::{collections::HashSet, os::unix::ffi::OsStrExt, path::PathBuf, time::Duration};

use serde::Deserialize;
use vexevent_common::{OpKind, PREFIX_KEY_BYTES};

use super::{ProbeSettings, SyscallHooks};
use crate::{
    capture::DrainSettings,
    event::{USER_OPS, WatchScope, is_under},
    filter::KernelPart,
};

/// What is wrong with `[capture]`.
#[derive(Debug, thiserror::Error)]
pub enum CaptureConfigError {
    #[error("watch path {path} does not exist or is not accessible ({source}); create it or fix the path")]
    WatchMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("watch path {path} is not a directory; watch the directory that contains it")]
    WatchNotDirectory { path: PathBuf },
    #[error("watch path {path} is {len} bytes long; the kernel matches at most {max} bytes of a prefix")]
    WatchTooLong { path: PathBuf, len: usize, max: usize },
    #[error("unknown operation type {name:?}; choose from: {choices}")]
    UnknownOp { name: String, choices: String },
    #[error("comm {comm:?} is {len} bytes; the kernel keeps at most 15")]
    CommTooLong { comm: String, len: usize },
    #[error("ring_bytes {value} must be a power of two and at least 4096")]
    RingSize { value: u32 },
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
    #[error("capture.priority_boost {value} is out of range: 0 (off) to {max} (nice -{max})")]
    PriorityBoost { value: u8, max: u8 },
}

/// The highest `capture.priority_boost`: nice -20, the kernel's lowest nice value.
const MAX_PRIORITY_BOOST: u8 = 20;

/// What `[capture]` builds: the probes', the drainer's settings and the operation types to emit
/// events for.
#[derive(Clone, Debug)]
pub struct CaptureSettings {
    pub probes: ProbeSettings,
    pub drain: DrainSettings,
    pub ops: HashSet<OpKind>,
}

/// `[capture]`: what the kernel probes capture.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Directories (or mount points) to watch; `/` watches everything.
    pub watch: Vec<PathBuf>,
    /// Operation types to report (names as in `USER_OPS`); empty means all.
    pub ops: Vec<String>,
    /// Only these process ids (thread-group ids); empty means all.
    pub pids: Vec<u32>,
    /// Only this user id.
    pub uid: Option<u32>,
    /// Only tasks with this name (at most 15 bytes, as the kernel stores it).
    pub comm: Option<String>,
    /// Size of each shard's ring buffer in bytes: a power of two, at least 4096.
    pub ring_bytes: u32,
    /// Ring buffers (shards); 0 means one per CPU, at most 8.
    pub shards: usize,
    /// While records come, the period of the drains (on a timer: the probes do not wake the
    /// drainer then, at least 20 us); after a wakeup, the time before the first drain. In
    /// microseconds (a longer one: bigger batches, less CPU per event, more latency).
    pub batch_window_us: u64,
    /// Bound on how late a record may reach userspace relative to other shards' records, in
    /// microseconds; events are released in timestamp order once this has passed.
    pub reorder_window_us: u64,
    /// The draining (pipeline) thread runs at nice minus this, so that it keeps up with a
    /// workload holding every CPU; 0: off, at most 20.
    pub priority_boost: u8,
    /// Hook type of the syscall probes: `auto`, `btf` or `tracepoint`.
    pub syscall_hooks: SyscallHooks,
    /// Turn the probes' own diagnostics on and print them (off: they cost nothing).
    pub debug_probes: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            watch: vec![PathBuf::from("/")],
            ops: Vec::new(),
            pids: Vec::new(),
            uid: None,
            comm: None,
            ring_bytes: 16 << 20,
            shards: 0,
            batch_window_us: 100,
            reorder_window_us: 100,
            priority_boost: 5,
            syscall_hooks: SyscallHooks::Auto,
            debug_probes: false,
        }
    }
}

impl CaptureConfig {
    /// Every problem of the section, in field order.
    #[must_use]
    pub fn problems(&self) -> Vec<CaptureConfigError> {
        let mut problems: Vec<CaptureConfigError> =
            self.watch.iter().filter_map(|path| canonical_watch_dir(path).err()).collect();
        problems.extend(self.ops.iter().filter_map(|name| parse_op(name).err()));
        if let Some(comm) = self.comm.as_ref().filter(|comm| comm.len() > 15) {
            problems.push(CaptureConfigError::CommTooLong { comm: comm.clone(), len: comm.len() });
        }
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < 4096 {
            problems.push(CaptureConfigError::RingSize { value: self.ring_bytes });
        }
        if self.reorder_window_us == 0 {
            problems.push(CaptureConfigError::Zero { field: "capture.reorder_window_us" });
        }
        if self.priority_boost > MAX_PRIORITY_BOOST {
            problems.push(CaptureConfigError::PriorityBoost {
                value: self.priority_boost,
                max: MAX_PRIORITY_BOOST,
            });
        }
        problems
    }

    /// The probes' and the drainer's settings: what the kernel can evaluate of the filter
    /// (`pushed`) narrows the probes' own filters where this section leaves them open; the
    /// probes also time `daemon_functions` of `daemon_binary` (`[fuse]`'s).
    ///
    /// # Errors
    /// The first problem of the section (see [`CaptureConfig::problems`]).
    pub fn build(
        &self,
        pushed: &KernelPart,
        daemon_binary: Option<PathBuf>,
        daemon_functions: Vec<String>,
    ) -> Result<CaptureSettings, CaptureConfigError> {
        let mut watch_dirs = self.watch.iter().map(canonical_watch_dir).collect::<Result<Vec<_>, _>>()?;
        let mut ops: HashSet<OpKind> = if self.ops.is_empty() {
            USER_OPS.into_iter().collect()
        } else {
            self.ops.iter().map(|name| parse_op(name)).collect::<Result<_, _>>()?
        };
        if let Some(pushed) = &pushed.ops {
            ops.retain(|op| pushed.contains(op));
        }
        if let Some(dirs) = &pushed.dirs {
            watch_dirs = narrow_watch(watch_dirs, dirs);
        }
        let pids =
            if self.pids.is_empty() { pushed.pids.clone().unwrap_or_default() } else { self.pids.clone() };
        // Both are at most 15 bytes: checked by `problems`, and a pushed-down comm.
        let comm = self.comm.as_ref().or(pushed.comm.as_ref()).map(|comm| {
            let mut bytes = [0u8; 16];
            bytes[..comm.len().min(15)].copy_from_slice(&comm.as_bytes()[..comm.len().min(15)]);
            bytes
        });
        Ok(CaptureSettings {
            probes: ProbeSettings {
                scope: WatchScope::new(watch_dirs),
                ops: ops.iter().copied().collect(),
                pids,
                uid: self.uid.or(pushed.uid),
                comm,
                ring_bytes: self.ring_bytes,
                shards: self.shards,
                daemon_binary,
                daemon_functions,
                syscall_hooks: self.syscall_hooks,
                debug_probes: self.debug_probes,
                // `[[tracepoints]]` and `[[kernel_functions]]` are sections of their own.
                tracepoints: Vec::new(),
                kernel_functions: Vec::new(),
            },
            drain: DrainSettings {
                batch_window: Duration::from_micros(self.batch_window_us),
                reorder_window: Duration::from_micros(self.reorder_window_us),
                priority_boost: self.priority_boost,
            },
            ops,
        })
    }
}

/// The watched directories narrowed to the directories a filter pins every path to (the default
/// `/` included): each pinned directory inside a watched one, and each watched directory inside a
/// pinned one. Unchanged when they do not meet (the filter then passes nothing anyway).
fn narrow_watch(watch: Vec<Vec<u8>>, pinned: &[PathBuf]) -> Vec<Vec<u8>> {
    let pinned: Vec<Vec<u8>> = pinned
        .iter()
        .filter_map(|dir| std::fs::canonicalize(dir).ok())
        .map(|dir| dir.as_os_str().as_bytes().to_vec())
        .collect();
    let everything = watch.is_empty() || watch.iter().any(|dir| dir == b"/");
    let mut narrowed: Vec<Vec<u8>> = pinned
        .iter()
        .filter(|dir| everything || watch.iter().any(|watched| is_under(dir, watched)))
        .cloned()
        .collect();
    narrowed.extend(watch.iter().filter(|watched| pinned.iter().any(|dir| is_under(watched, dir))).cloned());
    if narrowed.is_empty() { watch } else { narrowed }
}

/// A watched directory, canonical, as bytes.
fn canonical_watch_dir(path: &PathBuf) -> Result<Vec<u8>, CaptureConfigError> {
    let canonical = std::fs::canonicalize(path)
        .map_err(|source| CaptureConfigError::WatchMissing { path: path.clone(), source })?;
    if !canonical.is_dir() {
        return Err(CaptureConfigError::WatchNotDirectory { path: path.clone() });
    }
    let bytes = canonical.as_os_str().as_bytes().to_vec();
    // Room for the trailing '/' or NUL the kernel's trie entries carry.
    if bytes.len() + 1 > PREFIX_KEY_BYTES {
        return Err(CaptureConfigError::WatchTooLong {
            path: path.clone(),
            len: bytes.len(),
            max: PREFIX_KEY_BYTES - 1,
        });
    }
    Ok(bytes)
}

/// Parses an operation type name (one of `USER_OPS`).
fn parse_op(name: &str) -> Result<OpKind, CaptureConfigError> {
    USER_OPS.into_iter().find(|op| op.name() == name).ok_or_else(|| CaptureConfigError::UnknownOp {
        name: name.to_owned(),
        choices: USER_OPS.map(OpKind::name).join(", "),
    })
}
