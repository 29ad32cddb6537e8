//! The data directory's free space. Under `cluster.min_free_bytes` a member stops proposing (what
//! it captures waits in its bounded buffer; what does not fit is dropped and counted), refuses
//! entries from the leader and, as leader, proposals (counted, `cluster_writes_refused_disk`),
//! stops sending heartbeats and standing for election (so the others elect a leader that can
//! write), and says why in `writes_refused`; it keeps serving the log it has. It takes part again
//! once space is freed. So the log does not run into a full disk: a write or fsync that fails
//! anyway stops the raft node for good (`log`).

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use tokio::sync::watch;

use crate::telemetry::{Counters, add};

/// The data directory is under its reserve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the data directory {dir} has {free} bytes free, under cluster.min_free_bytes ({reserve})")]
pub struct DiskLow {
    pub dir: PathBuf,
    pub free: u64,
    pub reserve: u64,
}

/// Watches the free space of the data directory (clones share it).
#[derive(Clone, Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    reserve: u64,
    low: Arc<watch::Sender<Option<DiskLow>>>,
    counters: Arc<Counters>,
}

/// Bytes an unprivileged writer may still use on the file system of `dir`.
pub(super) fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: statvfs only fills the zeroed plain-data struct it is given.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid struct to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &raw mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

impl DiskGuard {
    #[must_use]
    pub fn new(dir: &Path, reserve: u64, counters: &Arc<Counters>) -> Self {
        Self {
            dir: dir.to_owned(),
            reserve,
            low: Arc::new(watch::channel(None).0),
            counters: Arc::clone(counters),
        }
    }

    /// Looks at the free space now.
    ///
    /// # Errors
    /// `DiskLow` when it is under the reserve.
    pub fn check(&self) -> Result<(), DiskLow> {
        let state = match free_bytes(&self.dir) {
            Ok(free) => {
                (free < self.reserve).then(|| DiskLow { dir: self.dir.clone(), free, reserve: self.reserve })
            }
            Err(error) => {
                // Not knowing is not a reason to stop: a failing write is caught by the log.
                tracing::warn!(dir = %self.dir.display(), %error, "cluster: cannot read the free space of the data directory");
                None
            }
        };
        self.low.send_if_modified(|current| {
            let changed = current.is_some() != state.is_some();
            if changed {
                if let Some(low) = &state {
                    tracing::error!(
                        %low,
                        "cluster: this member stops proposing, takes no new entries and does not lead until space is freed"
                    );
                } else {
                    tracing::warn!(dir = %self.dir.display(), "cluster: the data directory has room again; this member takes part again");
                }
                self.counters.cluster_disk_low.store(u64::from(state.is_some()), Ordering::Relaxed);
            }
            current.clone_from(&state);
            changed
        });
        state.map_or(Ok(()), Err)
    }

    /// Like [`check`](Self::check), counting a refusal (`cluster_writes_refused_disk`).
    ///
    /// # Errors
    /// `DiskLow` when it is under the reserve.
    pub fn admit(&self) -> Result<(), DiskLow> {
        self.check().inspect_err(|_| add(&self.counters.cluster_writes_refused_disk, 1))
    }

    /// Under the reserve at the last look.
    #[must_use]
    pub fn low(&self) -> Option<DiskLow> {
        self.low.borrow().clone()
    }

    /// Changes between under and over the reserve.
    #[must_use]
    pub fn watch(&self) -> watch::Receiver<Option<DiskLow>> {
        self.low.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_is_low_and_counted_and_one_below_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Arc::new(Counters::default());
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let roomy = DiskGuard::new(dir.path(), 1, &counters);
        assert_eq!(roomy.admit(), Ok(()));
        let full = DiskGuard::new(dir.path(), u64::MAX, &counters);
        let mut changes = full.watch();
        let low = full.admit().unwrap_err();
        assert_eq!(low.reserve, u64::MAX);
        assert!(low.to_string().contains("under cluster.min_free_bytes"), "{low}");
        assert!(changes.has_changed().unwrap(), "the change is announced");
        assert_eq!(full.low().map(|l| l.reserve), Some(u64::MAX));
        assert_eq!(counters.cluster_disk_low.load(Ordering::Relaxed), 1);
        assert_eq!(counters.cluster_writes_refused_disk.load(Ordering::Relaxed), 1);
        changes.mark_unchanged();
        full.check().unwrap_err();
        assert!(!changes.has_changed().unwrap(), "staying low is not a change");
    }
}
