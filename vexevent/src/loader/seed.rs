//! Seeds the scope maps with state older than the run: processes whose cwd is already inside a
//! watched directory, and fds already open on watched files (read from /proc).

use std::os::unix::ffi::OsStrExt;

use aya::{Ebpf, maps::HashMap};
use vexevent_common::{fd_scope_key, map_names};

use super::{LoaderError, ProbeSettings, map_error, missing};

fn watched(settings: &ProbeSettings, path: &[u8]) -> bool {
    path.first() == Some(&b'/') && settings.scope.contains(path)
}

fn link_target(path: &std::path::Path) -> Option<Vec<u8>> {
    std::fs::read_link(path).ok().map(|target| target.as_os_str().as_bytes().to_vec())
}

/// Walks /proc once and marks watched cwds and fds in the kernel maps.
pub(super) fn seed_scope(ebpf: &mut Ebpf, settings: &ProbeSettings) -> Result<(), LoaderError> {
    let own_pid = std::process::id();
    let mut cwds = Vec::new();
    let mut fds = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Ok(()) };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if pid == own_pid {
            continue;
        }
        if link_target(&entry.path().join("cwd")).is_some_and(|cwd| watched(settings, &cwd)) {
            cwds.push(pid);
        }
        let Ok(fd_entries) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd_entry in fd_entries.flatten() {
            let Some(fd) = fd_entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if link_target(&fd_entry.path()).is_some_and(|target| watched(settings, &target)) {
                fds.push(fd_scope_key(pid, fd));
            }
        }
    }
    let mut cwd_scope: HashMap<_, u32, u8> =
        HashMap::try_from(ebpf.map_mut(map_names::CWD_SCOPE).ok_or_else(missing(map_names::CWD_SCOPE))?)
            .map_err(map_error(map_names::CWD_SCOPE))?;
    for pid in cwds {
        cwd_scope.insert(pid, 1, 0).map_err(map_error(map_names::CWD_SCOPE))?;
    }
    let mut fd_scope: HashMap<_, u64, u8> =
        HashMap::try_from(ebpf.map_mut(map_names::FD_SCOPE).ok_or_else(missing(map_names::FD_SCOPE))?)
            .map_err(map_error(map_names::FD_SCOPE))?;
    for key in fds {
        fd_scope.insert(key, 1, 0).map_err(map_error(map_names::FD_SCOPE))?;
    }
    Ok(())
}
