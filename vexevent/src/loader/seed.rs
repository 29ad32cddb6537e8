//! Seeds the scope maps with state older than the run: processes whose cwd is already inside a
//! watched directory, and fds already open on watched files (read from /proc). The same scan,
//! with the paths, is kept for userspace: a process that exits (or an fd that is closed) before
//! its records are translated can no longer be looked up in /proc.

use std::os::unix::ffi::OsStrExt;

use aya::{Ebpf, maps::HashMap};
use vexevent_common::{SEEDED_FDS_MAX, fd_scope_key, map_names};

use super::{LoaderError, ProbeSettings, map_error, missing};

fn watched(settings: &ProbeSettings, path: &[u8]) -> bool {
    path.first() == Some(&b'/') && settings.scope.contains(path)
}

fn link_target(path: &std::path::Path) -> Option<Vec<u8>> {
    std::fs::read_link(path).ok().map(|target| target.as_os_str().as_bytes().to_vec())
}

/// What processes had inside the watch when the run started.
#[derive(Clone, Debug, Default)]
pub struct Seeded {
    /// Processes whose cwd was watched, with the cwd.
    pub cwds: Vec<(u32, Vec<u8>)>,
    /// Open fds on watched files: process, fd, path.
    pub fds: Vec<(u32, i32, Vec<u8>)>,
}

/// Walks /proc once and marks watched cwds and fds in the kernel maps; returns what it found.
pub(super) fn seed_scope(ebpf: &mut Ebpf, settings: &ProbeSettings) -> Result<Seeded, LoaderError> {
    let own_pid = std::process::id();
    let mut seeded = Seeded::default();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Ok(seeded) };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == own_pid {
            continue;
        }
        if let Some(cwd) = link_target(&entry.path().join("cwd")).filter(|cwd| watched(settings, cwd)) {
            seeded.cwds.push((pid, cwd));
        }
        let Ok(fd_entries) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd_entry in fd_entries.flatten() {
            let Some(fd) = fd_entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(target) = link_target(&fd_entry.path()).filter(|target| watched(settings, target)) {
                seeded.fds.push((pid, fd, target));
            }
        }
    }
    let mut cwd_scope: HashMap<_, u32, u8> =
        HashMap::try_from(ebpf.map_mut(map_names::CWD_SCOPE).ok_or_else(missing(map_names::CWD_SCOPE))?)
            .map_err(map_error(map_names::CWD_SCOPE))?;
    for (seeded_cwds, (pid, _)) in seeded.cwds.iter().enumerate() {
        // The table is full (E2BIG): the probes count what they cannot add from here on too.
        if let Err(error) = cwd_scope.insert(pid, 1, 0) {
            tracing::warn!(
                seeded = seeded_cwds,
                watched = seeded.cwds.len(),
                %error,
                "more processes have their cwd in a watched directory than the cwd scope table holds; the relative paths of the others are not followed"
            );
            break;
        }
    }
    // The probes move each mark to the fd's open file at its first use.
    let mut seeded_fds: HashMap<_, u64, u8> =
        HashMap::try_from(ebpf.map_mut(map_names::SEEDED_FDS).ok_or_else(missing(map_names::SEEDED_FDS))?)
            .map_err(map_error(map_names::SEEDED_FDS))?;
    if seeded.fds.len() > SEEDED_FDS_MAX as usize {
        tracing::warn!(
            open = seeded.fds.len(),
            followed = SEEDED_FDS_MAX,
            "more fds are open on watched files than the probes follow from before the run; writes through the others are not captured"
        );
    }
    for &(pid, fd, _) in seeded.fds.iter().take(SEEDED_FDS_MAX as usize) {
        // fds are never negative in /proc.
        seeded_fds
            .insert(fd_scope_key(pid, fd.unsigned_abs()), 1, 0)
            .map_err(map_error(map_names::SEEDED_FDS))?;
    }
    Ok(seeded)
}
