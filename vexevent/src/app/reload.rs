//! Reloading filters and routes while running (SIGHUP, control API): the configuration is read
//! again, validated whole, compiled, and handed to the pipeline thread, which switches between
//! two batches (so no event is lost or delivered twice). Only `[filter]`, `[[routes]]` and
//! `[routing]` change; sinks must stay the same, other sections apply at restart.

use crate::{
    config::{Config, ConfigError},
    filter::{FilterChain, FilterError},
    route::Router,
};

/// Reads the configuration again (the file, with the command-line options applied over it).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigError> + Send>;

/// What the pipeline switches to.
pub struct Routing {
    pub filter: FilterChain,
    pub router: Router,
}

/// Why a reload was refused (the running filters and routes stay).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("reload refused: {0}")]
    Config(#[from] ConfigError),
    #[error("reload refused: {0}")]
    Filter(#[from] FilterError),
    #[error("reload refused: [sinks] changed; sinks only change at restart")]
    SinksChanged,
    #[error("reload refused: the pipeline has stopped")]
    Stopped,
}

/// A successful reload.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub routes: usize,
    pub filters: usize,
    /// Changes that need a restart to take effect.
    pub warnings: Vec<String>,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reloaded: {} route(s), {} filter expression(s)", self.routes, self.filters)?;
        for warning in &self.warnings {
            write!(f, "; {warning}")?;
        }
        Ok(())
    }
}

/// Builds the new routing from `source`, checking it against the configuration running now.
///
/// # Errors
/// When the new configuration is invalid or changes the sinks.
pub fn prepare(running: &Config, source: &ConfigSource) -> Result<(Routing, Reloaded), ReloadError> {
    let config = source()?;
    let settings = config.validate()?;
    if config.sinks != running.sinks || config.output != running.output {
        return Err(ReloadError::SinksChanged);
    }
    let mut warnings = Vec::new();
    let restart_only = [
        ("[capture]", config.capture != running.capture),
        ("[fuse]", config.fuse != running.fuse),
        ("[vexfs]", config.vexfs != running.vexfs),
        ("[stream]", config.stream != running.stream),
        ("[control]", config.control != running.control),
        ("[stats]", config.stats != running.stats),
    ];
    for (section, changed) in restart_only {
        if changed {
            warnings.push(format!("{section} changed and applies at restart"));
        }
    }
    let running_kernel = running.validate().map(|s| s.kernel_filter).ok();
    if running_kernel.as_ref() != Some(&settings.kernel_filter) {
        warnings.push(
            "the kernel keeps the filter part pushed down at start (events it drops stay dropped until restart)"
                .to_owned(),
        );
    }
    let routing = Routing { filter: settings.filter.build()?, router: settings.router()? };
    let reloaded =
        Reloaded { routes: config.routes.len(), filters: config.filter.expressions.len(), warnings };
    Ok((routing, reloaded))
}
