//! Cgroup ids to paths: the kernel records carry a task's cgroup (v2) id, the inode number of its
//! directory in the cgroup file system; the analyse stage names a cgroup key by its path there
//! (`/system.slice/ssh.service`). The file system is walked on a worker thread (up to
//! [`MAX_CGROUPS`] directories, at most once a second) when an id is not known: the pipeline
//! thread never waits for it. An unknown id is shown by number (`cgroup:ID`) until a walk that
//! found it has been handed back ([`CgroupNames::poll`]); the walk replaces the cache whole.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    os::unix::{ffi::OsStringExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// Least time between two walks of the cgroup file system.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Cgroups named at most (a walk stops there).
pub const MAX_CGROUPS: usize = 16_384;
/// Deepest directory walked below the root.
const MAX_DEPTH: usize = 32;

/// Paths by cgroup id.
type Names = HashMap<u64, Box<str>>;

/// The walking thread's ends: a walk is asked for (at most one waits), and its names come back.
struct Worker {
    requests: Sender<()>,
    results: Receiver<Names>,
}

/// Cgroup paths by id (see the module documentation).
pub struct CgroupNames {
    /// Where the cgroup v2 file system is mounted (none: ids are shown as numbers).
    root: Option<PathBuf>,
    names: Names,
    /// Ids shown by number since the last walk came back (at most `max`).
    unnamed: HashSet<u64>,
    /// Started at the first unknown id.
    worker: Option<Worker>,
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
        Self { root, names: HashMap::new(), unnamed: HashSet::new(), worker: None, max: max.max(1) }
    }

    /// The path of cgroup `id` below the cgroup root (`/` for the root), or `cgroup:ID` when it
    /// is not known yet (a walk is asked for; [`poll`](Self::poll) tells when it named the id).
    pub fn name(&mut self, id: u64) -> String {
        if let Some(name) = self.names.get(&id) {
            return String::from(&**name);
        }
        if self.unnamed.len() < self.max {
            self.unnamed.insert(id);
        }
        self.request_walk();
        format!("cgroup:{id}")
    }

    /// Takes the names of a walk that has come back, if one has: the ids shown by number that
    /// it named.
    pub fn poll(&mut self) -> Option<Vec<(u64, String)>> {
        let worker = self.worker.as_ref()?;
        let names = match worker.results.try_recv() {
            Ok(names) => names,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => {
                // The walker is gone (it cannot have panicked but for a bug): numbers from now on.
                tracing::warn!("the cgroup walker stopped; cgroups are shown by number");
                self.worker = None;
                self.root = None;
                return None;
            }
        };
        self.names = names;
        let found =
            self.unnamed.drain().filter_map(|id| Some((id, String::from(&**self.names.get(&id)?)))).collect();
        // Ids the walk did not find (a cgroup already gone) stay numbers.
        Some(found)
    }

    /// Asks the worker (started if need be) for a walk; one already asked for is enough.
    fn request_walk(&mut self) {
        if self.worker.is_none() {
            let Some(root) = self.root.clone() else { return };
            let (requests, asked) = crossbeam_channel::bounded(1);
            let (done, results) = crossbeam_channel::bounded(1);
            let max = self.max;
            let spawned = std::thread::Builder::new()
                .name("cgroup-names".into())
                .spawn(move || walker(&root, max, &asked, &done));
            if let Err(error) = spawned {
                tracing::warn!(%error, "cannot start the cgroup walker; cgroups are shown by number");
                self.root = None;
                return;
            }
            self.worker = Some(Worker { requests, results });
        }
        if let Some(worker) = &self.worker {
            // Full: a walk is already asked for. Disconnected: seen by `poll`.
            let _ = worker.requests.try_send(());
        }
    }
}

/// The worker's loop: one walk per request, at most once every [`RESCAN_EVERY`], until the
/// stage drops its ends.
fn walker(root: &Path, max: usize, asked: &Receiver<()>, done: &Sender<Names>) {
    let mut last_walk: Option<Instant> = None;
    while asked.recv().is_ok() {
        if let Some(wait) = last_walk.and_then(|at| RESCAN_EVERY.checked_sub(at.elapsed())) {
            std::thread::sleep(wait);
        }
        last_walk = Some(Instant::now());
        let mut names = HashMap::new();
        walk(root, root, 0, max, &mut names);
        if done.send(names).is_err() {
            return;
        }
    }
}

/// Records `dir` and its subdirectories in `names` (until it holds `max`).
fn walk(root: &Path, dir: &Path, depth: usize, max: usize, names: &mut Names) {
    let Ok(metadata) = std::fs::metadata(dir) else { return };
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    let name = format!("/{}", relative.to_string_lossy());
    names.entry(metadata.ino()).or_insert_with(|| name.into());
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if names.len() >= max {
            return;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &entry.path(), depth + 1, max, names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls until a walk comes back: the ids it named.
    fn named(names: &mut CgroupNames) -> Vec<(u64, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(named) = names.poll() {
                return named;
            }
            assert!(Instant::now() < deadline, "no walk came back");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn ids_are_numbers_until_a_walk_on_the_worker_names_them_and_the_cache_is_bounded() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("system.slice/a.service")).unwrap();
        std::fs::create_dir_all(root.path().join("user.slice")).unwrap();
        let ino = |path: &str| std::fs::metadata(root.path().join(path)).unwrap().ino();
        let mut names = CgroupNames::new(Some(root.path().to_owned()), 100);
        let service = ino("system.slice/a.service");
        assert_eq!(names.name(service), format!("cgroup:{service}"), "not walked yet: a number");
        assert_eq!(named(&mut names), [(service, "/system.slice/a.service".to_owned())]);
        assert_eq!(names.name(service), "/system.slice/a.service");
        assert_eq!(names.name(ino("")), "/", "named by the same walk");
        assert_eq!(names.name(1), "cgroup:1", "unknown ids are numbers");
        assert_eq!(named(&mut names), [], "a second walk (a second later) does not find it");
        let mut small = CgroupNames::new(Some(root.path().to_owned()), 2);
        small.name(1);
        named(&mut small);
        assert_eq!(small.names.len(), 2, "a walk stops at the bound");
        let mut none = CgroupNames::new(None, 10);
        assert_eq!(none.name(7), "cgroup:7", "no cgroup file system");
        assert!(none.worker.is_none(), "and no walker");
    }
}
