//! The stats file: the running instance's current [`StatsSnapshot`] as JSON, replaced atomically,
//! so `vexevent stats` (another process) can read it at any time.

use std::{io, path::Path};

use crate::telemetry::StatsSnapshot;

/// Writes the snapshot (to a temporary file renamed over the old one).
///
/// # Errors
/// When the directory cannot be created or the file written.
pub fn write_stats_file(path: &Path, snapshot: &StatsSnapshot) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(snapshot)?)?;
    std::fs::rename(&temporary, path)
}

/// Reads a stats file.
///
/// # Errors
/// When the file is missing or not a stats snapshot.
pub fn read_stats_file(path: &Path) -> io::Result<StatsSnapshot> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/stats.json");
        let mut snapshot = StatsSnapshot { pid: 7, ..StatsSnapshot::default() };
        snapshot.kernel.insert("seen".into(), 3);
        write_stats_file(&path, &snapshot).unwrap();
        let back = read_stats_file(&path).unwrap();
        assert_eq!(back.pid, 7);
        assert_eq!(back.kernel["seen"], 3);
    }
}
