//! Typed, strict configuration (TOML) with working defaults: `vexevent run` needs no file.
//! Every field is documented in README.md ("Configuration"); `Config::validate` turns it into
//! the settings the stages use, or says exactly what is wrong.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use std::io::Read as _;

use serde::Deserialize;
use vexevent_common::OpKind;

use crate::{
    analyse::{AnalyseConfig, AnalyseConfigError},
    capture::DrainSettings,
    correlate::{CorrelateOptions, FuseConfig, FuseConfigError},
    event::{NodeConfig, NodeId, OriginError},
    expr::{Filter, FilterChain, FilterError},
    filter::{FilterConfig, KernelPart, pushdown},
    http::{AuthError, ControlConfig, StreamConfig},
    loader::{
        CaptureConfig, CaptureConfigError, CaptureSettings, FunctionConfig, ProbeSettings, TracepointConfig,
    },
    react::{ReactConfig, ReactSettings, RuleConfig, RuleError, read_rules_file, rule_problems},
    replicate::{ClusterConfig, ClusterConfigError, ClusterSettings},
    route::{self, Outputs, OutputsError, RouteConfig, Router, RoutingSection},
    sinks::{OutputConfig, SinkConfig},
    telemetry::{HealthConfig, HealthConfigError},
    translate::VexfsConfig,
};

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub capture: CaptureConfig,
    pub filter: FilterConfig,
    pub fuse: FuseConfig,
    pub vexfs: VexfsConfig,
    pub output: OutputConfig,
    /// Named outputs (`[sinks.NAME]`); none: `[output]` is the one sink.
    pub sinks: BTreeMap<String, SinkConfig>,
    pub routes: Vec<RouteConfig>,
    pub routing: RoutingSection,
    pub stream: StreamConfig,
    pub control: ControlConfig,
    pub stats: StatsConfig,
    pub analyse: AnalyseConfig,
    pub health: HealthConfig,
    /// How rules act (`[react]`).
    pub react: ReactConfig,
    /// Rules over the event stream (`[[rules]]`; more in `react.rules_file`).
    pub rules: Vec<RuleConfig>,
    /// Tracepoints attached by name (`[[tracepoints]]`).
    pub tracepoints: Vec<TracepointConfig>,
    /// Kernel functions attached by name (`[[kernel_functions]]`).
    pub kernel_functions: Vec<FunctionConfig>,
    /// Replication with other instances (`[cluster]`); absent: this instance stands alone.
    pub cluster: Option<ClusterConfig>,
}

/// `[stats]`: counters reporting.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Seconds between stats reports on stderr; 0 turns periodic reports off.
    pub interval_secs: u64,
    /// File the running instance keeps its current stats in (read by `vexevent stats`).
    pub file: PathBuf,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self { interval_secs: 10, file: PathBuf::from(DEFAULT_STATS_FILE) }
    }
}

/// Largest configuration file read, in bytes (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Where `vexevent run` keeps its stats unless told otherwise.
pub const DEFAULT_STATS_FILE: &str = "/run/vexevent/stats.json";

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is larger than {limit} bytes; a configuration is a few KiB")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Capture(#[from] CaptureConfigError),
    #[error(transparent)]
    Fuse(#[from] FuseConfigError),
    #[error(transparent)]
    Node(#[from] OriginError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Access(#[from] AuthError),
    #[error(transparent)]
    Outputs(#[from] OutputsError),
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Analyse(#[from] AnalyseConfigError),
    #[error(transparent)]
    Health(#[from] HealthConfigError),
    #[error(transparent)]
    Cluster(#[from] ClusterConfigError),
}

/// Validated settings: what each component is built from.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The node events are stamped with.
    pub node: NodeId,
    /// The probes: scope, kernel filters, rings, hooks (`[capture]`, `[fuse]`'s daemon, and what
    /// the filter pushes down).
    pub probes: ProbeSettings,
    /// The drainer of the rings (`[capture]`'s batching and ordering).
    pub drain: DrainSettings,
    /// Operation types to emit events for.
    pub ops: HashSet<OpKind>,
    /// The correlate stage (`[fuse]`'s join).
    pub correlate: CorrelateOptions,
    pub filter: FilterConfig,
    /// What of the filter the probes apply.
    pub kernel_filter: KernelPart,
    /// Configured `VexFS` directories (canonical); detected `VexFS` mounts are added at start.
    pub vexfs_paths: Vec<Vec<u8>>,
    /// Sinks, routes, unmatched outputs.
    pub outputs: Outputs,
    pub stream: StreamConfig,
    pub control: ControlConfig,
    pub stats_interval: Option<std::time::Duration>,
    pub stats_file: PathBuf,
    /// The analyse stage (`[analyse]`).
    pub analyse: AnalyseConfig,
    /// What readiness requires (`[health]`).
    pub health: HealthConfig,
    /// The `react` stage: its rules (the file's included) and how they act.
    pub react: ReactSettings,
    /// The `replicate` stage (`[cluster]`), when this instance is a member of a cluster.
    pub cluster: Option<ClusterSettings>,
}

/// The filter chain and the routes, compiled once when the configuration is built (the
/// pipeline's filter and route stages take them).
pub struct Compiled {
    pub filter: FilterChain,
    pub router: Router,
}

impl Config {
    /// Reads and parses a TOML configuration file.
    ///
    /// # Errors
    /// When the file cannot be read or is not valid (unknown keys included).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read { path: path.to_owned(), source };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|file| std::io::Read::take(file, MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
            .map_err(read)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_owned(), limit: MAX_CONFIG_BYTES });
        }
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parses TOML text; the error message names the line and the problem.
    ///
    /// # Errors
    /// The parser's message when the text is not a valid configuration.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|error| error.to_string().trim_end().replace('\n', " "))
    }

    /// Every problem of the configuration, in field order (`check-config` lists them all).
    #[must_use]
    pub fn problems(&self) -> Vec<ConfigError> {
        self.check().0
    }

    /// Checks every field, compiling each filter and route expression once: every problem, and
    /// the compiled filter and routes when there is none.
    fn check(&self) -> (Vec<ConfigError>, Option<(Compiled, Outputs)>) {
        let mut problems: Vec<ConfigError> =
            self.capture.problems().into_iter().map(ConfigError::Capture).collect();
        problems.extend(self.node.node_id().err().map(ConfigError::Node));
        let (filter, macros, filter_problems) = self.filter.compile();
        problems.extend(filter_problems.into_iter().map(ConfigError::Filter));
        problems.extend(self.fuse.problem().map(ConfigError::Fuse));
        problems.extend(self.analyse.problems().into_iter().map(ConfigError::Analyse));
        problems.extend(self.health.problem().map(ConfigError::Health));
        problems.extend(self.cluster.iter().flat_map(ClusterConfig::problems).map(ConfigError::Cluster));
        problems.extend(self.stream.problem().map(ConfigError::Access));
        problems.extend(self.control.problem().map(ConfigError::Access));
        let outputs = self.outputs().map_err(|errors| problems.extend(errors)).ok();
        let mut route_filters = Vec::with_capacity(self.routes.len());
        for route in &self.routes {
            match Filter::new(&format!("routes.{}", route.name), &route.match_expr, &macros) {
                Ok(filter) => route_filters.push(filter),
                Err(error) => problems.push(ConfigError::Filter(error)),
            }
        }
        match self.react_settings() {
            Ok(react) => {
                problems.extend(rule_problems(&react.rules, &macros).into_iter().map(ConfigError::Rule));
            }
            Err(error) => problems.push(ConfigError::Rule(error)),
        }
        let compiled = match (filter, outputs) {
            (Some(filter), Some(outputs)) if problems.is_empty() => {
                let router = Router::compiled(
                    &outputs.routes,
                    route_filters,
                    outputs.unmatched.clone(),
                    outputs.sinks.len(),
                );
                Some((Compiled { filter, router }, outputs))
            }
            _ => None,
        };
        (problems, compiled)
    }

    /// The rules (the configuration's, then `react.rules_file`'s) and how they act.
    ///
    /// # Errors
    /// When the rules file cannot be read or parsed.
    pub fn react_settings(&self) -> Result<ReactSettings, RuleError> {
        let mut rules = self.rules.clone();
        if let Some(file) = &self.react.rules_file {
            rules.extend(read_rules_file(file)?);
        }
        Ok(ReactSettings { config: self.react.clone(), rules, macros: self.filter.macros.clone() })
    }

    /// Sinks, routes and unmatched outputs, resolved.
    ///
    /// # Errors
    /// Every problem of `[output]`, `[sinks]`, `[[routes]]` and `[routing]`.
    pub fn outputs(&self) -> Result<Outputs, Vec<ConfigError>> {
        route::outputs(&self.output, &self.sinks, &self.routes, &self.routing)
            .map_err(|errors| errors.into_iter().map(ConfigError::Outputs).collect())
    }

    /// Checks every field and resolves the watch paths.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        self.build().map(|(settings, _)| settings)
    }

    /// Checks every field, resolves the watch paths and compiles the filter and routes (once).
    ///
    /// # Errors
    /// The first problem found.
    ///
    /// # Panics
    /// Never: a configuration without problems compiles.
    pub fn build(&self) -> Result<(Settings, Compiled), ConfigError> {
        let (problems, compiled) = self.check();
        let (compiled, outputs) = match (problems.into_iter().next(), compiled) {
            (None, Some(compiled)) => compiled,
            (Some(first), _) => return Err(first),
            (None, None) => unreachable!("a configuration without problems compiles"),
        };
        // What the kernel can evaluate of the filter narrows the probes' own filters where the
        // configuration leaves them open.
        let kernel_filter = pushdown(&compiled.filter);
        let CaptureSettings { mut probes, drain, ops } = self.capture.build(
            &kernel_filter,
            self.fuse.daemon_binary.clone(),
            self.fuse.daemon_functions.clone(),
        )?;
        probes.tracepoints.clone_from(&self.tracepoints);
        probes.kernel_functions.clone_from(&self.kernel_functions);
        let settings = Settings {
            node: self.node.node_id()?,
            probes,
            drain,
            ops,
            vexfs_paths: self.vexfs.roots(),
            filter: self.filter.clone(),
            kernel_filter,
            correlate: self.fuse.correlate_options(),
            outputs,
            stream: self.stream.clone(),
            control: self.control.clone(),
            stats_interval: (self.stats.interval_secs > 0)
                .then(|| std::time::Duration::from_secs(self.stats.interval_secs)),
            stats_file: self.stats.file.clone(),
            analyse: self.analyse.clone(),
            health: self.health.clone(),
            react: self.react_settings()?,
            cluster: self.cluster.as_ref().map(ClusterConfig::settings).transpose()?,
        };
        Ok((settings, compiled))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt as _;

    use super::*;

    #[test]
    fn empty_file_is_the_working_default() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config, Config::default());
        let settings = config.validate().unwrap();
        assert!(settings.probes.scope.watches_all(), "default watches everything");
        assert_eq!(settings.ops.len(), crate::event::USER_OPS.len());
    }

    #[test]
    fn a_filter_path_narrows_the_kernel_scope_of_the_default_watch() {
        let dir = tempfile::tempdir().unwrap();
        let canonical = std::fs::canonicalize(dir.path()).unwrap().as_os_str().as_bytes().to_vec();
        let filter = |config: &mut Config| {
            config.filter.expressions = vec![format!("path prefix \"{}/\"", dir.path().display())];
        };
        // The default `--watch /`: the probes watch the filter's directory only.
        let mut config = Config::default();
        filter(&mut config);
        assert_eq!(config.validate().unwrap().probes.scope.dirs(), std::slice::from_ref(&canonical));
        // A watched directory around it narrows to it too; one inside it stays.
        let inner = dir.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        for (watch, expected) in [
            (std::env::temp_dir(), canonical.clone()),
            (inner.clone(), std::fs::canonicalize(&inner).unwrap().as_os_str().as_bytes().to_vec()),
        ] {
            let mut config = Config::default();
            config.capture.watch = vec![watch];
            filter(&mut config);
            assert_eq!(config.validate().unwrap().probes.scope.dirs(), [expected]);
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_location() {
        let error = Config::from_toml("[capture]\nwatchh = [\"/tmp\"]\n").unwrap_err();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("unknown field `watchh`"), "{error}");
    }

    #[test]
    fn an_oversized_or_deeply_nested_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        std::fs::write(&path, format!("# {}\n", "x".repeat(usize::try_from(MAX_CONFIG_BYTES).unwrap())))
            .unwrap();
        let error = Config::from_file(&path).unwrap_err();
        assert!(matches!(error, ConfigError::TooLarge { .. }), "{error}");
        assert!(error.to_string().contains("larger than 1048576 bytes"), "{error}");
        // Nesting in TOML itself: the parser's own recursion limit answers with an error.
        let nested = format!("a = {}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Config::from_toml(&nested).is_err());
    }

    #[test]
    fn bad_values_get_clear_errors() {
        let mut config = Config::default();
        config.capture.watch = vec![PathBuf::from("/definitely/not/here")];
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Capture(CaptureConfigError::WatchMissing { .. }))
        ));
        config.capture.watch = vec![PathBuf::from("/etc/hostname")];
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Capture(CaptureConfigError::WatchNotDirectory { .. }))
        ));
        config.capture.watch = vec![PathBuf::from("/tmp")];
        config.capture.ops = vec!["opne".into()];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("\"opne\"") && error.contains("open, read"), "{error}");
        config.capture.ops = vec!["write".into()];
        config.capture.ring_bytes = 5000;
        assert!(matches!(config.validate(), Err(ConfigError::Capture(CaptureConfigError::RingSize { .. }))));
        config.capture.ring_bytes = 4096;
        config.capture.priority_boost = 21;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("priority_boost 21") && error.contains("0 (off) to 20"), "{error}");
        config.capture.priority_boost = 20;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn the_documented_examples_parse_and_validate() {
        for text in [
            include_str!("../../../vexevent.example.toml"),
            include_str!("../../../vexevent.routing.example.toml"),
        ] {
            let config = Config::from_toml(text).unwrap();
            config.validate().unwrap();
        }
        let routing = Config::from_toml(include_str!("../../../vexevent.routing.example.toml")).unwrap();
        let outputs = routing.outputs().unwrap();
        assert_eq!(outputs.sinks.len(), 7);
        assert_eq!(outputs.routes.len(), 3);
        let (_, compiled) = routing.build().unwrap();
        assert_eq!(compiled.filter.filters.len(), routing.filter.expressions.len());
    }

    #[test]
    fn every_sink_and_route_problem_is_listed_with_its_place() {
        let config = Config::from_toml(
            r#"
[output]
path = "/tmp/x.jsonl"
[sinks.hook]
type = "webhook"
path = "/tmp/y"
[sinks.sock]
type = "socket"
address = "udp:1.2.3.4:5"
[sinks.file]
type = "file"
queue = 0
[[routes]]
name = "a"
match = "type =="
targets = ["hook", "nope"]
key = "pid"
[[routes]]
name = "a"
match = "true"
targets = []
[routing]
unmatched = ["gone"]
"#,
        )
        .unwrap();
        let problems: Vec<String> = config.problems().iter().map(ToString::to_string).collect();
        let expect = [
            "output.path (or --output) is set while [sinks] are configured",
            "sinks.file: type File needs `path`",
            "sinks.file: `queue` must be at least 1",
            "sinks.hook: `path` does not apply to type Webhook",
            "sinks.hook: type Webhook needs `url`",
            "must start with unix: or tcp:",
            "routes[0] (a): `key` only applies with balance = \"key\"",
            "routes[0] (a): \"nope\" is not a configured sink; sinks: file, hook, sock",
            "routes[1] (a): the name is used twice",
            "routes[1] (a): `targets` is empty",
            "routing.unmatched: \"gone\" is not a configured sink",
            "filter \"routes.a\" does not parse",
        ];
        for expected in expect {
            assert!(problems.iter().any(|p| p.contains(expected)), "missing {expected:?} in {problems:#?}");
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    }

    /// TOML's and the configuration's own words, sections and awkward values.
    const CONFIG_TOKENS: &[&str] = &[
        "\n",
        "[capture]\n",
        "[filter]\n",
        "[filter.macros]\n",
        "[stream]\n",
        "[control]\n",
        "[output]\n",
        "[sinks.a]\n",
        "[sinks.b]\n",
        "[[routes]]\n",
        "[routing]\n",
        "[fuse]\n",
        "[stats]\n",
        "watch",
        "ops",
        "comm",
        "ring_bytes",
        "shards",
        "expressions",
        "mode",
        "addr",
        "token",
        "max_buffer",
        "max_connections",
        "metrics_group",
        "type",
        "path",
        "address",
        "url",
        "queue",
        "name",
        "match",
        "targets",
        "unmatched",
        "balance",
        "key",
        "timeout_ms",
        "keep",
        "m",
        " = ",
        "\"",
        "\"x\"",
        "\"\"",
        "\"/\"",
        "\"/tmp\"",
        "\"127.0.0.1:0\"",
        "\"0.0.0.0:1\"",
        "\"file\"",
        "\"socket\"",
        "\"tcp:127.0.0.1:1\"",
        "\"pid == 1\"",
        "\"@m\"",
        "\"((\"",
        "0",
        "1",
        "-1",
        "0o777",
        "0o1000",
        "4096",
        "18446744073709551616",
        "true",
        "[",
        "]",
        ",",
        "{",
        "}",
        "\"root\"",
        "\"write\"",
    ];

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any text: a configuration whose problems are listed (and which validates or says
        /// why), or a parse error; never a panic.
        #[test]
        fn fuzz_config_loader(text in crate::fuzz::text_of(CONFIG_TOKENS, 40)) {
            if let Ok(config) = Config::from_toml(&text) {
                let problems = config.problems();
                let validated = config.validate();
                proptest::prop_assert_eq!(problems.is_empty(), validated.is_ok(), "{:?}", problems);
            }
        }
    }
}
