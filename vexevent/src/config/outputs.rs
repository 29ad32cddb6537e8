//! `[sinks.NAME]`, `[[routes]]` and `[routing]`: the named outputs, the routes to them, and where
//! events no route matches go. Without `[sinks]`, `[output]` is the one sink, called "output".

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use super::{ConfigError, OutputConfig};
use crate::{
    pipeline::WhenFull,
    route::{Balance, BalanceKey, RouteSpec},
    sinks::{
        Delivery, Destination, NatsAuth, NatsSettings, Rotation, Servers, SinkSpec, SocketAddress,
        SubjectTemplate, WebhookSettings,
    },
};

/// The sink `[output]` becomes when no `[sinks]` are configured.
pub const DEFAULT_SINK: &str = "output";

/// What a sink writes to.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SinkType {
    Stdout,
    File,
    Webhook,
    Socket,
    Nats,
    Null,
}

/// `[sinks.NAME]`: one named output.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// Events each queue lane (urgent, bulk) holds.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// `block` (default), `drop-newest` or `drop-oldest`.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Most events per delivery (default: 500 for webhooks, 4096 otherwise).
    pub batch_events: Option<usize>,
    /// How long a batch may wait to fill, in milliseconds (default: 100 for webhooks, 0).
    pub batch_ms: Option<u64>,
    /// First retry delay after a failed delivery (doubles per attempt), in milliseconds.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Failed attempts after which a batch is dropped (counted); 0 retries until shutdown.
    #[serde(default)]
    pub max_retries: u32,
    /// `file`: the JSON Lines file.
    pub path: Option<PathBuf>,
    /// `file`: rotate at this many bytes (0: never).
    #[serde(default)]
    pub rotate_bytes: u64,
    /// `file`: rotate at this age in seconds (0: never).
    #[serde(default)]
    pub rotate_secs: u64,
    /// `file`: rotated files kept.
    pub keep: Option<usize>,
    /// `file`: permission bits of the file (TOML octal, e.g. `0o640`); default 0o600.
    pub mode: Option<u32>,
    /// `webhook`: the `http://` or `https://` URL to POST batches to; `nats`: the server,
    /// `nats://host:port` or `tls://host:port` (several comma-separated).
    pub url: Option<String>,
    /// `webhook`: extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `webhook`: whole-request timeout; `socket`: connect and write timeout; `nats`: longest
    /// wait for `JetStream`'s acknowledgement; in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `socket`: `unix:/path` or `tcp:host:port` to connect to.
    pub address: Option<String>,
    /// `nats`: the subject to publish on; `{type}` stands for the event type.
    pub subject: Option<String>,
    /// `nats`: longest wait for a connection, in milliseconds.
    pub connect_timeout_ms: Option<u64>,
    /// `nats`: authentication token.
    pub token: Option<String>,
    /// `nats`: user name and password.
    pub user: Option<String>,
    pub password: Option<String>,
    /// `nats`: a `.creds` file (user JWT and `NKey` seed).
    pub credentials: Option<PathBuf>,
}

impl Default for SinkConfig {
    /// A stdout sink with every default.
    fn default() -> Self {
        Self {
            kind: SinkType::Stdout,
            queue: default_queue(),
            when_full: WhenFull::default(),
            batch_events: None,
            batch_ms: None,
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
            max_retries: 0,
            path: None,
            rotate_bytes: 0,
            rotate_secs: 0,
            keep: None,
            mode: None,
            url: None,
            headers: BTreeMap::new(),
            timeout_ms: None,
            address: None,
            subject: None,
            connect_timeout_ms: None,
            token: None,
            user: None,
            password: None,
            credentials: None,
        }
    }
}

const fn default_queue() -> usize {
    10_000
}
const fn default_retry_initial_ms() -> u64 {
    100
}
const fn default_retry_max_ms() -> u64 {
    10_000
}
const DEFAULT_KEEP: usize = 5;
/// Events are every user's file activity: readable by root only unless configured.
pub const DEFAULT_FILE_MODE: u32 = 0o600;
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_NATS_ACK_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_NATS_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// `[[routes]]`: a match expression and the sinks its events go to.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Filter expression (macros of `[filter.macros]` apply).
    #[serde(rename = "match")]
    pub match_expr: String,
    /// Sink names.
    pub targets: Vec<String>,
    /// `all` (default), `round-robin` or `key`.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance = "key"`: `path` (default), `pid`, `comm` or `type`.
    pub key: Option<BalanceKey>,
    /// Skip targets that are down.
    #[serde(default)]
    pub failover: bool,
}

/// `[routing]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// Sinks for events no route matches. Default: every sink when there are no routes, none
    /// (events counted as unrouted) when there are.
    pub unmatched: Option<Vec<String>>,
}

/// The resolved outputs and routes.
#[derive(Clone, Debug)]
pub struct Outputs {
    pub sinks: Vec<SinkSpec>,
    pub routes: Vec<RouteSpec>,
    pub unmatched: Vec<usize>,
}

impl SinkConfig {
    /// The fields set that do not apply to this sink type.
    fn stray_fields(&self) -> Vec<&'static str> {
        let file = self.kind == SinkType::File;
        let webhook = self.kind == SinkType::Webhook;
        let nats = self.kind == SinkType::Nats;
        [
            ("path", self.path.is_some() && !file),
            ("rotate_bytes", self.rotate_bytes > 0 && !file),
            ("rotate_secs", self.rotate_secs > 0 && !file),
            ("keep", self.keep.is_some() && !file),
            ("mode", self.mode.is_some() && !file),
            ("url", self.url.is_some() && !webhook && !nats),
            ("headers", !self.headers.is_empty() && !webhook),
            ("timeout_ms", self.timeout_ms.is_some() && !webhook && !nats && self.kind != SinkType::Socket),
            ("address", self.address.is_some() && self.kind != SinkType::Socket),
            ("subject", self.subject.is_some() && !nats),
            ("connect_timeout_ms", self.connect_timeout_ms.is_some() && !nats),
            ("token", self.token.is_some() && !nats),
            ("user", self.user.is_some() && !nats),
            ("password", self.password.is_some() && !nats),
            ("credentials", self.credentials.is_some() && !nats),
        ]
        .into_iter()
        .filter_map(|(field, stray)| stray.then_some(field))
        .collect()
    }

    /// The sink, or what is wrong with it.
    fn spec(&self, name: &str) -> Result<SinkSpec, Vec<ConfigError>> {
        let problem = |message: String| ConfigError::Sink { name: name.to_owned(), message };
        let mut problems: Vec<ConfigError> = self
            .stray_fields()
            .into_iter()
            .map(|field| problem(format!("`{field}` does not apply to type {:?}", self.kind)))
            .collect();
        let required = |field: &str| problem(format!("type {:?} needs `{field}`", self.kind));
        let destination = match self.kind {
            SinkType::Stdout => Some(Destination::Stdout),
            SinkType::Null => Some(Destination::Null),
            SinkType::File => {
                if self.path.is_none() {
                    problems.push(required("path"));
                }
                self.path.as_ref().map(|path| Destination::File {
                    path: path.clone(),
                    rotation: rotation(
                        self.rotate_bytes,
                        self.rotate_secs,
                        self.keep.unwrap_or(DEFAULT_KEEP),
                    ),
                    mode: self.mode.unwrap_or(DEFAULT_FILE_MODE),
                })
            }
            SinkType::Webhook => match &self.url {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    Some(Destination::Webhook(WebhookSettings {
                        url: url.clone(),
                        timeout: Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
                        headers: self.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    }))
                }
                Some(url) => {
                    problems.push(problem(format!("url {url:?} must start with http:// or https://")));
                    None
                }
                None => {
                    problems.push(required("url"));
                    None
                }
            },
            SinkType::Nats => self
                .nats()
                .map_err(|messages| problems.extend(messages.into_iter().map(problem)))
                .ok()
                .map(Destination::Nats),
            SinkType::Socket => match self.address.as_deref().map(str::parse::<SocketAddress>) {
                Some(Ok(address)) => Some(Destination::Socket {
                    address,
                    timeout: Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
                }),
                Some(Err(message)) => {
                    problems.push(problem(message));
                    None
                }
                None => {
                    problems.push(required("address"));
                    None
                }
            },
        };
        if let Some(mode) = self.mode.filter(|mode| *mode > 0o777) {
            problems.push(problem(format!("`mode` {mode:#o} is not permission bits (0o000 to 0o777)")));
        }
        for (field, value) in [("queue", self.queue), ("batch_events", self.batch_events.unwrap_or(1))] {
            if value == 0 {
                problems.push(problem(format!("`{field}` must be at least 1")));
            }
        }
        match destination {
            Some(destination) if problems.is_empty() => {
                let webhook = self.kind == SinkType::Webhook;
                Ok(SinkSpec {
                    name: name.to_owned(),
                    destination,
                    queue: self.queue,
                    when_full: self.when_full,
                    delivery: Delivery {
                        batch_events: self.batch_events.unwrap_or(if webhook { 500 } else { 4096 }),
                        linger: Duration::from_millis(self.batch_ms.unwrap_or(if webhook { 100 } else { 0 })),
                        retry_initial: Duration::from_millis(self.retry_initial_ms),
                        retry_max: Duration::from_millis(self.retry_max_ms.max(self.retry_initial_ms)),
                        max_retries: self.max_retries,
                    },
                })
            }
            _ => Err(problems),
        }
    }
}

impl SinkConfig {
    /// A `nats` sink's settings, or what is wrong with them.
    fn nats(&self) -> Result<NatsSettings, Vec<String>> {
        let mut problems = Vec::new();
        let servers: Option<Servers> = required_nats_field("url", self.url.as_deref(), &mut problems);
        let subject: Option<SubjectTemplate> =
            required_nats_field("subject", self.subject.as_deref(), &mut problems);
        let auth = match (&self.token, &self.user, &self.password, &self.credentials) {
            (None, None, None, None) => Some(NatsAuth::None),
            (Some(token), None, None, None) => Some(NatsAuth::Token(token.clone())),
            (None, Some(user), Some(password), None) => {
                Some(NatsAuth::UserPassword { user: user.clone(), password: password.clone() })
            }
            (None, None, None, Some(path)) => Some(NatsAuth::Credentials(path.clone())),
            _ => {
                problems.push(
                    "authenticate with one of: `token`, `user` and `password`, `credentials`".to_owned(),
                );
                None
            }
        };
        match (servers, subject, auth) {
            (Some(servers), Some(subject), Some(auth)) if problems.is_empty() => Ok(NatsSettings {
                servers,
                subject,
                auth,
                connect_timeout: Duration::from_millis(
                    self.connect_timeout_ms.unwrap_or(DEFAULT_NATS_CONNECT_TIMEOUT_MS),
                ),
                ack_timeout: Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_NATS_ACK_TIMEOUT_MS)),
            }),
            _ => Err(problems),
        }
    }
}

/// A `nats` sink's required field `field`, parsed; or what is wrong with it, in `problems`.
fn required_nats_field<T: std::str::FromStr<Err = String>>(
    field: &str,
    text: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<T> {
    match text.map(str::parse) {
        Some(Ok(value)) => Some(value),
        Some(Err(message)) => {
            problems.push(message);
            None
        }
        None => {
            problems.push(format!("type Nats needs `{field}`"));
            None
        }
    }
}

/// A file sink's rotation (0 turns a limit off).
#[must_use]
fn rotation(bytes: u64, secs: u64, keep: usize) -> Rotation {
    Rotation {
        max_bytes: (bytes > 0).then_some(bytes),
        max_age: (secs > 0).then(|| Duration::from_secs(secs)),
        keep,
    }
}

/// The one sink `[output]` describes.
fn default_sink(output: &OutputConfig) -> Result<SinkSpec, Vec<ConfigError>> {
    let sink = match output.path.clone().filter(|p| p.as_os_str() != "-") {
        Some(path) => SinkConfig {
            kind: SinkType::File,
            path: Some(path),
            rotate_bytes: output.rotate_bytes,
            rotate_secs: output.rotate_secs,
            keep: Some(output.keep),
            mode: Some(output.mode),
            ..SinkConfig::default()
        },
        // Rotation means nothing on stdout: `[output]` ignores it there.
        None => SinkConfig::default(),
    };
    sink.spec(DEFAULT_SINK)
}

/// Resolves sinks, routes and the unmatched outputs; collects every problem.
///
/// # Errors
/// Every problem found, in configuration order.
pub fn outputs(
    output: &OutputConfig,
    sinks: &BTreeMap<String, SinkConfig>,
    routes: &[RouteConfig],
    routing: &RoutingSection,
) -> Result<Outputs, Vec<ConfigError>> {
    let mut problems = Vec::new();
    let specs: Vec<SinkSpec> = if sinks.is_empty() {
        default_sink(output).map_err(|errors| problems.extend(errors)).into_iter().collect()
    } else {
        if output.path.as_ref().is_some_and(|p| p.as_os_str() != "-") {
            problems.push(ConfigError::OutputWithSinks);
        }
        sinks
            .iter()
            .filter_map(|(name, sink)| sink.spec(name).map_err(|errors| problems.extend(errors)).ok())
            .collect()
    };
    let names: Vec<&str> =
        sinks.keys().map(String::as_str).chain(sinks.is_empty().then_some(DEFAULT_SINK)).collect();
    let resolve = |what: String, targets: &[String], problems: &mut Vec<ConfigError>| -> Vec<usize> {
        targets
            .iter()
            .filter_map(|target| {
                let found = names.iter().position(|n| n == target);
                if found.is_none() {
                    problems.push(ConfigError::UnknownSink {
                        what: what.clone(),
                        sink: target.clone(),
                        known: names.join(", "),
                    });
                }
                found
            })
            .collect()
    };
    let mut seen = BTreeSet::new();
    let mut route_specs = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let what = format!("routes[{i}] ({})", route.name);
        if !seen.insert(route.name.as_str()) {
            problems
                .push(ConfigError::Route { what: what.clone(), message: "the name is used twice".into() });
        }
        if route.targets.is_empty() {
            problems.push(ConfigError::Route { what: what.clone(), message: "`targets` is empty".into() });
        }
        if route.key.is_some() && route.balance != Balance::Key {
            problems.push(ConfigError::Route {
                what: what.clone(),
                message: "`key` only applies with balance = \"key\"".into(),
            });
        }
        let targets = resolve(what, &route.targets, &mut problems);
        route_specs.push(RouteSpec {
            name: route.name.clone(),
            match_expr: route.match_expr.clone(),
            targets,
            balance: route.balance,
            key: route.key.unwrap_or_default(),
            failover: route.failover,
        });
    }
    let unmatched = match &routing.unmatched {
        Some(names) => resolve("routing.unmatched".into(), names, &mut problems),
        None if routes.is_empty() => (0..specs.len()).collect(),
        None => Vec::new(),
    };
    if problems.is_empty() {
        Ok(Outputs { sinks: specs, routes: route_specs, unmatched })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn a_nats_sink_is_checked_whole() {
        let config = Config::from_toml(
            r#"
[sinks.a]
type = "nats"
url = "http://x"
subject = "x.*"
token = "t"
user = "u"
[sinks.b]
type = "nats"
[sinks.c]
type = "file"
path = "/tmp/x"
subject = "s"
[sinks.ok]
type = "nats"
url = "nats://127.0.0.1:4222, tls://h:4222"
subject = "vexevent.{type}"
user = "u"
password = "p"
"#,
        )
        .unwrap();
        let problems: Vec<String> = config.problems().iter().map(ToString::to_string).collect();
        let expect = [
            "sinks.a: url \"http://x\" must be nats://host:port or tls://host:port",
            "sinks.a: subject \"x.*\" must be dot-separated tokens",
            "sinks.a: authenticate with one of",
            "sinks.b: type Nats needs `url`",
            "sinks.b: type Nats needs `subject`",
            "sinks.c: `subject` does not apply to type File",
        ];
        for expected in expect {
            assert!(problems.iter().any(|p| p.contains(expected)), "missing {expected:?} in {problems:#?}");
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    }
}
