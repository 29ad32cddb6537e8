//! NATS `JetStream` sink: each event is one message on a stream's subject and counts as delivered
//! only once `JetStream` acknowledged it (stored). Every message carries `Nats-Msg-Id` = the
//! event's origin id, the same on every retry, so the stream drops the repeats a retried batch
//! sends again (within its duplicate window): at least once to `JetStream`, exactly once in the
//! stream. async-nats runs on a current-thread tokio runtime driven by the sink's worker thread
//! while it delivers.

use std::{borrow::Cow, collections::VecDeque, path::PathBuf, sync::Arc, time::Duration};

use async_nats::{
    ConnectOptions,
    jetstream::{self, message::PublishMessage},
};
use bytes::Bytes;
use serde::Deserialize;

use super::{DeliveryError, SinkError, queue::Queued, worker::Deliver};

/// Messages published and not yet acknowledged, at most (published ahead of the acks, which
/// `JetStream` answers in order).
const IN_FLIGHT: usize = 1024;

/// What the event type placeholder of a subject is replaced by when a line is not an event.
const UNKNOWN_TYPE: &str = "Unknown";

/// Where and how the NATS sink publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsSettings {
    pub servers: Servers,
    pub subject: SubjectTemplate,
    pub auth: NatsAuth,
    /// Longest wait for a connection to a server.
    pub connect_timeout: Duration,
    /// Longest wait for `JetStream` to acknowledge a message (and for any other request).
    pub ack_timeout: Duration,
}

/// How the sink authenticates to the server.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    Token(String),
    UserPassword {
        user: String,
        password: String,
    },
    /// A `.creds` file (user JWT and `NKey` seed), read when the sink starts.
    Credentials(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    /// Names the method, never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Token(_) => f.write_str("Token(..)"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, ..)"),
            Self::Credentials(path) => write!(f, "Credentials({})", path.display()),
        }
    }
}

/// The servers to connect to (any one will do): `nats://host:port` or `tls://host:port`,
/// comma-separated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Servers(Vec<String>);

impl std::str::FromStr for Servers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let servers: Vec<String> = text.split(',').map(|server| server.trim().to_owned()).collect();
        let valid = servers.iter().all(|server| {
            (server.starts_with("nats://") || server.starts_with("tls://"))
                && server.parse::<async_nats::ServerAddr>().is_ok()
        });
        if valid {
            Ok(Self(servers))
        } else {
            Err(format!("url {text:?} must be nats://host:port or tls://host:port (several comma-separated)"))
        }
    }
}

impl std::fmt::Display for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// A message subject in which `{type}` stands for the event type (`vexevent.{type}` publishes
/// a file creation on `vexevent.FilesystemCreate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate(String);

/// The placeholder a subject template may hold.
const TYPE_PLACEHOLDER: &str = "{type}";

impl std::str::FromStr for SubjectTemplate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let sample = text.replace(TYPE_PLACEHOLDER, "T");
        let valid = !sample.is_empty()
            && sample.split('.').all(|token| {
                !token.is_empty()
                    && token != "*"
                    && token != ">"
                    && token.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'{' | b'}'))
            });
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!(
                "subject {text:?} must be dot-separated tokens of printable characters without wildcards (* >); {TYPE_PLACEHOLDER} stands for the event type"
            ))
        }
    }
}

impl SubjectTemplate {
    fn render(&self, event_type: &str) -> Cow<'_, str> {
        if self.0.contains(TYPE_PLACEHOLDER) {
            Cow::Owned(self.0.replace(TYPE_PLACEHOLDER, event_type))
        } else {
            Cow::Borrowed(&self.0)
        }
    }
}

/// What the sink reads of an event's JSON line.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    origin: OriginHead<'a>,
}

#[derive(Deserialize)]
struct OriginHead<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// A queued line as a message payload, without a copy.
struct Payload(Arc<str>);

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Publishes to `JetStream`, connecting on first delivery and again after a failed one.
pub struct NatsSink {
    settings: NatsSettings,
    /// The credentials file's text (read at start, so a missing file fails at start).
    credentials: Option<String>,
    runtime: tokio::runtime::Runtime,
    jetstream: Option<jetstream::Context>,
}

impl NatsSink {
    /// # Errors
    /// A credentials file that cannot be read or parsed, or a runtime that cannot start.
    pub fn new(settings: NatsSettings) -> Result<Self, SinkError> {
        let credentials = match &settings.auth {
            NatsAuth::Credentials(path) => {
                let read = std::fs::read_to_string(path).and_then(|text| {
                    ConnectOptions::with_credentials(&text)?;
                    Ok(text)
                });
                Some(read.map_err(|source| SinkError::Credentials { path: path.clone(), source })?)
            }
            _ => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| SinkError::Runtime { source })?;
        Ok(Self { settings, credentials, runtime, jetstream: None })
    }

    fn connect_options(&self) -> Result<ConnectOptions, DeliveryError> {
        let options = match (&self.settings.auth, &self.credentials) {
            (_, Some(text)) => ConnectOptions::with_credentials(text)?,
            (NatsAuth::Token(token), None) => ConnectOptions::with_token(token.clone()),
            (NatsAuth::UserPassword { user, password }, None) => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            (NatsAuth::None | NatsAuth::Credentials(_), None) => ConnectOptions::new(),
        };
        Ok(options
            .name("vexevent")
            .connection_timeout(self.settings.connect_timeout)
            .request_timeout(Some(self.settings.ack_timeout)))
    }

    /// The connection's `JetStream` context, connecting first when there is none.
    fn jetstream(&mut self) -> Result<jetstream::Context, DeliveryError> {
        if let Some(jetstream) = &self.jetstream {
            return Ok(jetstream.clone());
        }
        let options = self.connect_options()?;
        let servers = &self.settings.servers;
        let ack_timeout = self.settings.ack_timeout;
        let jetstream = self.runtime.block_on(async {
            let client = options
                .connect(servers.0.as_slice())
                .await
                .map_err(|error| DeliveryError::Nats(format!("cannot connect to {servers}: {error}")))?;
            // Built inside the runtime: the context spawns its acknowledgement task.
            Ok::<_, DeliveryError>(
                jetstream::ContextBuilder::new()
                    .timeout(ack_timeout)
                    .max_ack_inflight(IN_FLIGHT)
                    .build(client),
            )
        })?;
        Ok(self.jetstream.insert(jetstream).clone())
    }
}

impl Deliver for NatsSink {
    fn deliver(&mut self, batch: &[Queued]) -> Result<(), DeliveryError> {
        let jetstream = self.jetstream()?;
        let published = self.runtime.block_on(publish(&jetstream, &self.settings.subject, batch));
        if published.is_err() {
            // A fresh connection for the retry; the client reconnects by itself, but a new one
            // does not wait behind the old one's queued commands.
            self.jetstream = None;
        }
        published
    }
}

/// Publishes the batch in order, up to `IN_FLIGHT` messages ahead of their acknowledgements;
/// succeeds once every message is acknowledged (stored, or recognised as a duplicate).
async fn publish(
    jetstream: &jetstream::Context,
    subject: &SubjectTemplate,
    batch: &[Queued],
) -> Result<(), DeliveryError> {
    let mut pending = VecDeque::with_capacity(IN_FLIGHT.min(batch.len()));
    let mut duplicates = 0u64;
    for queued in batch {
        if pending.len() == IN_FLIGHT {
            if let Some(ack) = pending.pop_front() {
                duplicates += acknowledged(ack).await?;
            }
        }
        let head = serde_json::from_str::<Head<'_>>(&queued.line).ok();
        let mut message =
            PublishMessage::build().payload(Bytes::from_owner(Payload(Arc::clone(&queued.line))));
        if let Some(head) = &head {
            message = message.message_id(&head.origin.id);
        }
        let subject = subject.render(head.as_ref().map_or(UNKNOWN_TYPE, |h| &h.event_type)).into_owned();
        let ack = jetstream
            .send_publish(subject, message)
            .await
            .map_err(|error| DeliveryError::Nats(format!("publish failed: {error}")))?;
        pending.push_back(ack);
    }
    while let Some(ack) = pending.pop_front() {
        duplicates += acknowledged(ack).await?;
    }
    if duplicates > 0 {
        tracing::debug!(duplicates, "JetStream recognised repeats of messages it already stored");
    }
    Ok(())
}

/// Waits for one acknowledgement; 1 when `JetStream` had the message already.
async fn acknowledged(ack: jetstream::context::PublishAckFuture) -> Result<u64, DeliveryError> {
    let ack =
        ack.await.map_err(|error| DeliveryError::Nats(format!("not acknowledged by JetStream: {error}")))?;
    Ok(u64::from(ack.duplicate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_checked() {
        let servers: Servers = "nats://127.0.0.1:4222, tls://h.example:4443".parse().unwrap();
        assert_eq!(servers.to_string(), "nats://127.0.0.1:4222,tls://h.example:4443");
        for bad in ["", "http://h:1", "127.0.0.1:4222", "nats://h:1,", "nats://h:port"] {
            assert!(bad.parse::<Servers>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn subjects_are_checked_and_rendered() {
        let template: SubjectTemplate = "vexevent.{type}".parse().unwrap();
        assert_eq!(template.render("FilesystemCreate"), "vexevent.FilesystemCreate");
        let fixed: SubjectTemplate = "events".parse().unwrap();
        assert_eq!(fixed.render("FilesystemCreate"), "events");
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a", "a.{kind}"] {
            assert!(bad.parse::<SubjectTemplate>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_head_of_an_event_line_is_read() {
        let event = crate::event::SemanticEvent::sample(
            crate::event::EventType::FilesystemWrite,
            "/tmp/a",
            1,
            "x",
            true,
        );
        let line = serde_json::to_string(&event).unwrap();
        let head: Head<'_> = serde_json::from_str(&line).unwrap();
        assert_eq!(head.event_type, "FilesystemWrite");
        assert_eq!(head.origin.id, event.origin.id());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let auth = NatsAuth::UserPassword { user: "u".into(), password: "hunter2".into() };
        assert!(!format!("{auth:?} {:?}", NatsAuth::Token("hunter2".into())).contains("hunter2"));
    }
}
