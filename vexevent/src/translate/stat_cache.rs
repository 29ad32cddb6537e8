//! A short-lived cache of `lstat` results for opens of existing files: a file opened in a loop is
//! stat'ed once per second instead of once per open. Creation decisions never use it (they need a
//! fresh birth time, and their fresh result is kept), every mutation vexevent sees on a path drops
//! that path's entry, and a rename moves the entry to the new name (same inode, same type).

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
        self.keep(path.to_vec(), stat, now);
        Some(stat)
    }

    /// A fresh `lstat` of `path` made elsewhere (a create): kept for the opens and renames after.
    pub fn fresh(&mut self, path: &[u8], stat: PathStat) {
        self.keep(path.to_vec(), stat, Instant::now());
    }

    /// `from` was renamed to `to`: its entry, when fresh, now describes `to` (a rename keeps the
    /// inode and the file type) and is returned; `to`'s old entry is dropped either way.
    pub fn rename(&mut self, from: &[u8], to: &[u8]) -> Option<PathStat> {
        self.entries.remove(to);
        let (stat, at) = self.entries.remove(from)?;
        if at.elapsed() >= TTL {
            return None;
        }
        self.keep(to.to_vec(), stat, at);
        Some(stat)
    }

    fn keep(&mut self, path: Vec<u8>, stat: PathStat, at: Instant) {
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(path, (stat, at));
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

    #[test]
    fn a_rename_moves_the_entry_to_the_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&from, b"x").unwrap();
        std::fs::write(&to, b"old").unwrap();
        let (from_bytes, to_bytes) = (from.as_os_str().as_bytes(), to.as_os_str().as_bytes());
        let mut cache = StatCache::default();
        let stat = stat_path(from_bytes).unwrap();
        cache.fresh(from_bytes, stat);
        cache.stat(to_bytes).unwrap();
        std::fs::rename(&from, &to).unwrap();
        let moved = cache.rename(from_bytes, to_bytes).unwrap();
        assert_eq!(moved.inode, stat.inode);
        assert_eq!(moved.inode, stat_path(to_bytes).unwrap().inode, "the renamed file");
        assert_eq!(cache.stat(to_bytes).unwrap().inode, stat.inode, "kept under the new name");
        assert!(cache.rename(from_bytes, to_bytes).is_none(), "nothing left under the old name");
    }
}
