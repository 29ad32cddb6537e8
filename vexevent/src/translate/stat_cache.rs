//! A short-lived cache of `lstat` results for opens of existing files: a file opened in a loop is
//! stat'ed once per second instead of once per open. Creation decisions never use it (they need a
//! fresh birth time), and every mutation vexevent sees on a path drops that path's entry.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::process::{PathStat, stat_path};

/// How long a cached result is trusted (mutations by processes vexevent does not watch can only
/// be this stale).
const TTL: Duration = Duration::from_secs(1);
/// Entries kept before the cache starts over.
const CAPACITY: usize = 1 << 16;

#[derive(Debug, Default)]
pub struct StatCache {
    entries: HashMap<Vec<u8>, (PathStat, Instant)>,
}

impl StatCache {
    /// The path's metadata, from the cache when fresh.
    pub fn stat(&mut self, path: &[u8]) -> Option<PathStat> {
        let now = Instant::now();
        if let Some((stat, at)) = self.entries.get(path) {
            if now.duration_since(*at) < TTL {
                return Some(*stat);
            }
        }
        let stat = stat_path(path)?;
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(path.to_vec(), (stat, now));
        Some(stat)
    }

    /// The path changed (created, removed, renamed, linked): forget it.
    pub fn invalidate(&mut self, path: &[u8]) {
        self.entries.remove(path);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    #[test]
    fn serves_repeats_from_cache_until_invalidated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let bytes = path.as_os_str().as_bytes();
        let mut cache = StatCache::default();
        let first = cache.stat(bytes).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"y").unwrap();
        assert_eq!(cache.stat(bytes).unwrap().inode, first.inode, "cached");
        cache.invalidate(bytes);
        let fresh = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(cache.stat(bytes).unwrap().inode, std::os::unix::fs::MetadataExt::ino(&fresh));
    }
}
