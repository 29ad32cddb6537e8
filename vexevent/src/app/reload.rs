//! Reloading filters and routes while running (SIGHUP, control API): the configuration is read
//! again, validated whole, compiled, and handed to the pipeline thread, which switches between
//! two batches (so no event is lost or delivered twice); the part of the filter the kernel
//! evaluates (operation types, pids, uid, comm) is set in the probes again. Only `[filter]`,
//! `[[routes]]`, `[routing]` and the rules (`[[rules]]` and `react.rules_file`'s, when the `react`
//! stage runs) change; sinks must stay the same, other sections apply at restart.

use std::collections::HashSet;

use vexevent_common::OpKind;

use crate::{
    config::{Compiled, Config, ConfigError, Settings},
    expr::{FilterChain, FilterError},
    pipeline::Update,
    react::ReactSettings,
    route::Router,
};

/// Reads the configuration again (the file, with the command-line options applied over it).
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigError> + Send>;

/// What the pipeline switches to on a reload.
pub struct Routing {
    pub filter: FilterChain,
    pub router: Router,
    /// Operation types to emit events for.
    pub ops: HashSet<OpKind>,
    /// The rules, for a running `react` stage.
    pub react: Option<ReactSettings>,
}

impl Routing {
    /// The pipeline's reloadable part of a built configuration.
    #[must_use]
    pub fn new(compiled: Compiled, settings: &Settings) -> Self {
        Self { filter: compiled.filter, router: compiled.router, ops: settings.ops.clone(), react: None }
    }

    /// The updates for the stages that take them (the kernel source, filter, route, react).
    #[must_use]
    pub fn into_updates(self) -> Vec<(&'static str, Update)> {
        let mut updates: Vec<(&'static str, Update)> = vec![
            ("kernel", Box::new(self.ops)),
            ("filter", Box::new(self.filter)),
            ("route", Box::new(self.router)),
        ];
        if let Some(react) = self.react {
            updates.push(("react", Box::new(react)));
        }
        updates
    }
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
    #[error(
        "reload refused: the pipeline has not taken the previous reload yet (a full sink with when_full = \"block\"?); try again"
    )]
    Busy,
    #[error("reload applied in userspace, but the kernel's filters could not be set: {0}")]
    Kernel(#[from] crate::loader::LoaderError),
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

/// `[react]` apart from where the rules come from (rules reload).
fn without_rules(config: &Config) -> crate::react::ReactConfig {
    crate::react::ReactConfig { rules_file: None, ..config.react.clone() }
}

/// Builds the new settings and routing from `source`, checking them against the configuration
/// running now.
///
/// # Errors
/// When the new configuration is invalid or changes the sinks.
pub fn prepare(
    running: &Config,
    running_dirs: &[Vec<u8>],
    source: &ConfigSource,
) -> Result<(Settings, Routing, Reloaded), ReloadError> {
    let config = source()?;
    let (settings, compiled) = config.build()?;
    if config.sinks != running.sinks || config.output != running.output {
        return Err(ReloadError::SinksChanged);
    }
    let mut warnings = Vec::new();
    let restart_only = [
        ("[node]", config.node != running.node),
        ("[capture]", config.capture != running.capture),
        ("[fuse]", config.fuse != running.fuse),
        ("[vexfs]", config.vexfs != running.vexfs),
        ("[stream]", config.stream != running.stream),
        ("[control]", config.control != running.control),
        ("[stats]", config.stats != running.stats),
        ("[react]", without_rules(&config) != without_rules(running)),
    ];
    for (section, changed) in restart_only {
        if changed {
            warnings.push(format!("{section} changed and applies at restart"));
        }
    }
    if running_dirs != settings.probes.scope.dirs() {
        warnings.push("the watched directories (from [capture] or the filter) change at restart".to_owned());
    }
    let mut routing = Routing::new(compiled, &settings);
    // The react stage runs when the configuration at start had rules (or a rules file).
    if running.rules.is_empty() && running.react.rules_file.is_none() {
        if !settings.react.rules.is_empty() {
            warnings.push("rules were added: the react stage starts at restart".to_owned());
        }
    } else {
        routing.react = Some(settings.react.clone());
    }
    let reloaded =
        Reloaded { routes: config.routes.len(), filters: config.filter.expressions.len(), warnings };
    Ok((settings, routing, reloaded))
}
