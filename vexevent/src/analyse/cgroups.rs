//! Cgroup ids to paths: the kernel records carry a task's cgroup (v2) id, the inode number of its
//! directory in the cgroup file system; the analyse stage names a cgroup key by its path there
//! (`/system.slice/ssh.service`). The cgroup file system is walked when an id is not known, at
//! most once a second, and the ids found are kept in a bounded cache.

use std::{
    collections::HashMap,
    ffi::OsString,
    os::unix::{ffi::OsStringExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Least time between two walks of the cgroup file system.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Cgroups named at most (a walk stops there; a full cache is emptied before a walk).
pub const MAX_CGROUPS: usize = 16_384;
/// Deepest directory walked below the root.
const MAX_DEPTH: usize = 32;

/// Cgroup paths by id (see the module documentation).
pub struct CgroupNames {
    /// Where the cgroup v2 file system is mounted (none: ids are shown as numbers).
    root: Option<PathBuf>,
    names: HashMap<u64, Box<str>>,
    last_walk: Option<Instant>,
    max: usize,
}

impl CgroupNames {
    /// Names from the cgroup v2 file system this process sees (from /proc/self/mountinfo).
    #[must_use]
    pub fn from_mounts() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = crate::loader::cgroup2_mount_point(&mountinfo)
            .map(|bytes| PathBuf::from(OsString::from_vec(bytes)));
        Self::new(root, MAX_CGROUPS)
    }

    /// Names from the cgroup file system at `root`, at most `max`.
    #[must_use]
    pub fn new(root: Option<PathBuf>, max: usize) -> Self {
        Self { root, names: HashMap::new(), last_walk: None, max: max.max(1) }
    }

    /// The path of cgroup `id` below the cgroup root (`/` for the root), or `cgroup:ID` when it
    /// is not found (gone, or not walked yet this second).
    pub fn name(&mut self, id: u64) -> String {
        if let Some(name) = self.names.get(&id) {
            return String::from(&**name);
        }
        let due = self.last_walk.is_none_or(|at| at.elapsed() >= RESCAN_EVERY);
        if let (Some(root), true) = (self.root.clone(), due) {
            self.last_walk = Some(Instant::now());
            if self.names.len() >= self.max {
                self.names.clear();
            }
            self.walk(&root, &root, 0);
        }
        self.names.get(&id).map_or_else(|| format!("cgroup:{id}"), |name| String::from(&**name))
    }

    /// Records `dir` and its subdirectories (until the cache is full).
    fn walk(&mut self, root: &Path, dir: &Path, depth: usize) {
        let Ok(metadata) = std::fs::metadata(dir) else { return };
        let relative = dir.strip_prefix(root).unwrap_or(dir);
        let name = format!("/{}", relative.to_string_lossy());
        self.names.entry(metadata.ino()).or_insert_with(|| name.into());
        if depth >= MAX_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            if self.names.len() >= self.max {
                return;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.walk(root, &entry.path(), depth + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_named_by_their_directory_and_the_cache_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("system.slice/a.service")).unwrap();
        std::fs::create_dir_all(root.path().join("user.slice")).unwrap();
        let ino = |path: &str| std::fs::metadata(root.path().join(path)).unwrap().ino();
        let mut names = CgroupNames::new(Some(root.path().to_owned()), 100);
        assert_eq!(names.name(ino("system.slice/a.service")), "/system.slice/a.service");
        assert_eq!(names.name(ino("")), "/");
        assert_eq!(names.name(1), "cgroup:1", "unknown ids are numbers");
        let mut small = CgroupNames::new(Some(root.path().to_owned()), 2);
        small.name(1);
        assert_eq!(small.names.len(), 2, "a walk stops at the bound");
        assert_eq!(CgroupNames::new(None, 10).name(7), "cgroup:7", "no cgroup file system");
    }
}
