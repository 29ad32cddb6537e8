//! `[fuse]`: how FUSE requests are joined to the syscalls that caused them (the correlate stage's
//! settings), and which FUSE daemon functions the probes time.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::CorrelateOptions;

/// What is wrong with `[fuse]`.
#[derive(Debug, thiserror::Error)]
pub enum FuseConfigError {
    #[error("fuse.daemon_functions needs fuse.daemon_binary (the daemon's executable)")]
    DaemonBinaryMissing,
}

/// `[fuse]`: how FUSE requests are joined to the syscalls that caused them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FuseConfig {
    /// Longest a FUSE request waits for its caller's syscall, in milliseconds.
    pub join_window_ms: u64,
    /// Report lookups, attribute reads and flushes that no syscall claims.
    pub include_metadata: bool,
    /// Also report every FUSE request as an event of its own.
    pub raw_boundaries: bool,
    /// An unstripped FUSE daemon binary whose functions to time (uprobes).
    pub daemon_binary: Option<PathBuf>,
    /// Functions of `daemon_binary` to time: symbol or demangled Rust path (`crate::Type::fn`).
    pub daemon_functions: Vec<String>,
}

impl Default for FuseConfig {
    fn default() -> Self {
        Self {
            join_window_ms: 20,
            include_metadata: false,
            raw_boundaries: false,
            daemon_binary: None,
            daemon_functions: Vec::new(),
        }
    }
}

impl FuseConfig {
    /// What is wrong with the section, if anything.
    #[must_use]
    pub fn problem(&self) -> Option<FuseConfigError> {
        (!self.daemon_functions.is_empty() && self.daemon_binary.is_none())
            .then_some(FuseConfigError::DaemonBinaryMissing)
    }

    /// The correlate stage's settings.
    #[must_use]
    pub fn correlate_options(&self) -> CorrelateOptions {
        CorrelateOptions {
            window: Duration::from_millis(self.join_window_ms),
            include_metadata: self.include_metadata,
            raw_boundaries: self.raw_boundaries,
        }
    }
}
