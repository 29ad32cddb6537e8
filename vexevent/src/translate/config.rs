//! `[vexfs]`: where `VexFS` semantics apply besides the `VexFS` mounts detected at start.

use std::{os::unix::ffi::OsStrExt, path::PathBuf};

use serde::Deserialize;

/// `[vexfs]`: where `VexFS` semantics apply besides detected `VexFS` mounts.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VexfsConfig {
    /// Directories whose files follow `VexFS` conventions (special files, graph events).
    pub paths: Vec<PathBuf>,
}

impl VexfsConfig {
    /// The configured directories, canonical where they exist, as bytes.
    #[must_use]
    pub fn roots(&self) -> Vec<Vec<u8>> {
        self.paths
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).as_os_str().as_bytes().to_vec())
            .collect()
    }
}
