//! [`WatchScope`]: the watched directories, and whether a normalized absolute path is inside one.

/// Whether `path` is `dir` or inside it (whole components: `/a/bc` is not inside `/a/b`).
#[must_use]
pub fn is_under(path: &[u8], dir: &[u8]) -> bool {
    dir == b"/" || (path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/'))
}

/// The watched directories, as userspace checks them.
#[derive(Clone, Debug, Default)]
pub struct WatchScope {
    /// Canonical absolute directories; empty means everything.
    dirs: Vec<Vec<u8>>,
}

impl WatchScope {
    /// A scope over these canonical directories (`/` or none: everything).
    #[must_use]
    pub fn new(dirs: Vec<Vec<u8>>) -> Self {
        let watch_all = dirs.iter().any(|d| d == b"/");
        Self { dirs: if watch_all { Vec::new() } else { dirs } }
    }

    /// Whether everything is watched.
    #[must_use]
    pub fn watches_all(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Whether an absolute, normalized path is inside a watched directory (or is one).
    #[must_use]
    pub fn contains(&self, path: &[u8]) -> bool {
        self.watches_all() || self.dirs.iter().any(|dir| is_under(path, dir))
    }

    /// The watched directories (empty when everything is watched).
    #[must_use]
    pub fn dirs(&self) -> &[Vec<u8>] {
        &self.dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_matches_whole_components() {
        let scope = WatchScope::new(vec![b"/tmp/w".to_vec()]);
        assert!(scope.contains(b"/tmp/w"));
        assert!(scope.contains(b"/tmp/w/x"));
        assert!(!scope.contains(b"/tmp/wx"));
        assert!(!scope.contains(b"/tmp"));
        assert!(WatchScope::new(vec![b"/".to_vec()]).contains(b"/anything"));
    }
}
