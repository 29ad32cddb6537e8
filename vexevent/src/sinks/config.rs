//! `[sinks.NAME]` (and `[output]`, the one sink when there are none): what each kind of sink
//! needs, checked whole, and the [`SinkSpec`] a sink starts from.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{
    Delivery, Destination, FileAccess, NatsAuth, NatsSettings, Rotation, Servers, SinkSpec, SocketAddress,
    SubjectTemplate, WebhookSettings,
};
use crate::pipeline::WhenFull;

/// The sink `[output]` becomes when no `[sinks]` are configured.
pub const DEFAULT_SINK: &str = "output";

/// What is wrong with one sink's configuration.
#[derive(Debug, thiserror::Error)]
#[error("sinks.{sink}: {message}")]
pub struct SinkConfigError {
    pub sink: String,
    pub message: String,
}

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
    /// `file`: the group the file belongs to (a name or a number); default root's.
    pub group: Option<String>,
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
            group: None,
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

/// `[output]`: where events go.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// JSON Lines file to append to; absent or `-` means stdout.
    pub path: Option<PathBuf>,
    /// Start a new file once the current one holds this many bytes (0: never).
    pub rotate_bytes: u64,
    /// Start a new file once the current one is this many seconds old (0: never).
    pub rotate_secs: u64,
    /// Rotated files to keep (`path.1` is the newest).
    pub keep: usize,
    /// Permission bits of the file (TOML octal, e.g. `0o640`).
    pub mode: u32,
    /// The group the file belongs to (a name or a number); default root's.
    pub group: Option<String>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self { path: None, rotate_bytes: 0, rotate_secs: 0, keep: 5, mode: DEFAULT_FILE_MODE, group: None }
    }
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
            ("group", self.group.is_some() && !file),
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
    ///
    /// # Errors
    /// Every problem of this sink.
    pub fn spec(&self, name: &str) -> Result<SinkSpec, Vec<SinkConfigError>> {
        let problem = |message: String| SinkConfigError { sink: name.to_owned(), message };
        let mut problems: Vec<SinkConfigError> = self
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
                let group = self.group.as_deref().and_then(|name| {
                    let gid = crate::privilege::group_id(name);
                    if gid.is_none() {
                        problems.push(problem(format!(
                            "`group` {name:?} is not a group in /etc/group nor a number"
                        )));
                    }
                    gid
                });
                self.path.as_ref().map(|path| Destination::File {
                    path: path.clone(),
                    rotation: rotation(
                        self.rotate_bytes,
                        self.rotate_secs,
                        self.keep.unwrap_or(DEFAULT_KEEP),
                    ),
                    access: FileAccess { mode: self.mode.unwrap_or(DEFAULT_FILE_MODE), group },
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
///
/// # Errors
/// Every problem of `[output]`.
pub fn default_sink(output: &OutputConfig) -> Result<SinkSpec, Vec<SinkConfigError>> {
    let sink = match output.path.clone().filter(|p| p.as_os_str() != "-") {
        Some(path) => SinkConfig {
            kind: SinkType::File,
            path: Some(path),
            rotate_bytes: output.rotate_bytes,
            rotate_secs: output.rotate_secs,
            keep: Some(output.keep),
            mode: Some(output.mode),
            group: output.group.clone(),
            ..SinkConfig::default()
        },
        // Rotation means nothing on stdout: `[output]` ignores it there.
        None => SinkConfig::default(),
    };
    sink.spec(DEFAULT_SINK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_sink_is_checked_whole() {
        let sinks: BTreeMap<String, SinkConfig> = toml::from_str(
            r#"
[a]
type = "nats"
url = "http://x"
subject = "x.*"
token = "t"
user = "u"
[b]
type = "nats"
[c]
type = "file"
path = "/tmp/x"
subject = "s"
[ok]
type = "nats"
url = "nats://127.0.0.1:4222, tls://h:4222"
subject = "vexevent.{type}"
user = "u"
password = "p"
"#,
        )
        .unwrap();
        let problems: Vec<String> = sinks
            .iter()
            .filter_map(|(name, sink)| sink.spec(name).err())
            .flatten()
            .map(|problem| problem.to_string())
            .collect();
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

    #[test]
    fn a_file_sinks_group_is_resolved_or_refused_by_name() {
        let sinks: BTreeMap<String, SinkConfig> = toml::from_str(
            "[a]\ntype = \"file\"\npath = \"/tmp/a\"\ngroup = \"root\"\n\
             [b]\ntype = \"file\"\npath = \"/tmp/b\"\ngroup = \"no-such-group-here\"\n\
             [c]\ntype = \"stdout\"\ngroup = \"root\"\n",
        )
        .unwrap();
        let spec = sinks["a"].spec("a").unwrap();
        assert!(matches!(
            spec.destination,
            Destination::File { access: FileAccess { mode: 0o600, group: Some(0) }, .. }
        ));
        let refused = sinks["b"].spec("b").err().unwrap();
        assert_eq!(
            refused[0].to_string(),
            "sinks.b: `group` \"no-such-group-here\" is not a group in /etc/group nor a number"
        );
        let stray = sinks["c"].spec("c").err().unwrap();
        assert_eq!(stray[0].to_string(), "sinks.c: `group` does not apply to type Stdout");
    }
}
