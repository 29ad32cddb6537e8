//! The live stream: a WebSocket server at `/api/v1/semantic/events/stream` (`VexFS`'s path) where
//! each subscriber gets the events its query selects (`VexFS`'s query filters plus our filter
//! language), numbered per subscription. A subscriber that falls behind its bounded buffer is
//! not allowed to stall the others: its excess events are dropped and it gets a gap notice with
//! the count before the next event (or, with `slow=disconnect`, it is disconnected). The server
//! binds to loopback unless a token is configured; with a token every request must carry it.
//! Subscriptions to one exact path are indexed by it, so that thousands of them cost one lookup
//! per event rather than one filter check each.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Router,
    extract::{
        Query, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::mpsc;

use crate::{
    event::{EventType, SemanticEvent},
    expr::{Filter, FilterChain, FilterError},
    telemetry::{Counters, add},
};

/// The stream's path, as `VexFS`'s semantic API defined it.
pub const STREAM_PATH: &str = "/api/v1/semantic/events/stream";

/// Messages a subscriber's buffer holds before it counts as slow.
const SUBSCRIBER_BUFFER: usize = 4096;

/// Initial read buffer of a connection (tungstenite's default is 128 KiB, touched on the first
/// read): subscribers only send control frames (close, ping), at most 139 bytes each, and the
/// buffer grows if a larger frame comes.
const READ_BUFFER: usize = 256;

/// Largest message a subscriber may send: it has nothing to say beyond control frames, and an
/// unbounded message would let one client make the server allocate without limit.
const MAX_INCOMING_MESSAGE: usize = 64 * 1024;

/// How often owed gap notices are sent and departed subscribers forgotten.
const GAP_NOTICE_PERIOD: std::time::Duration = std::time::Duration::from_millis(10);

/// Characters that make a `path_pattern` a glob rather than one exact path (`\` escapes).
const GLOB_CHARACTERS: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];

/// The stream server and its token option, as errors name them.
pub const STREAM_SERVER: &str = "event stream";
pub const STREAM_TOKEN_FLAG: &str = "--stream-token";

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "the {server} would listen on {addr}, which is not loopback; set a token ({flag}) for remote access"
    )]
    RemoteWithoutToken { server: &'static str, flag: &'static str, addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}; choose another --stream-addr")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the stream runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What a slow subscriber gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlowPolicy {
    /// Drop what does not fit and send a gap notice.
    Drop,
    /// Close the connection.
    Disconnect,
}

struct Subscriber {
    filter: FilterChain,
    sender: mpsc::Sender<String>,
    policy: SlowPolicy,
    /// Next subscription sequence number.
    next: u64,
    /// Events dropped since the last gap notice.
    dropped: u64,
}

impl Subscriber {
    /// Offers events (in output order) to this subscriber; false when it is to be removed
    /// (closed, or slow with `slow=disconnect`).
    fn offer<'a>(
        &mut self,
        events: impl Iterator<Item = (&'a SemanticEvent, &'a Arc<str>)>,
        counters: &Counters,
    ) -> bool {
        for (event, json) in events {
            if self.filter.check(event).is_none() {
                continue;
            }
            self.send_gap_notice();
            let message = format!(r#"{{"subscription_sequence":{},"event":{json}}}"#, self.next);
            match self.sender.try_send(message) {
                Ok(()) => self.next += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    add(&counters.stream_dropped, 1);
                    if self.policy == SlowPolicy::Disconnect {
                        add(&counters.stream_disconnected, 1);
                        return false;
                    }
                    self.dropped += 1;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Tells the subscriber how many events it missed since the last notice, if any and if
    /// there is room.
    fn send_gap_notice(&mut self) {
        if self.dropped > 0
            && self.sender.try_send(format!(r#"{{"gap":{{"dropped":{}}}}}"#, self.dropped)).is_ok()
        {
            self.dropped = 0;
        }
    }
}

/// The subscriptions, indexed so that an event is offered only to those that can select it.
#[derive(Default)]
struct Subscribers {
    /// Subscriptions with a `path_pattern`, by the pattern's literal prefix (up to its first
    /// glob character; the whole path for an exact one): no event whose path does not start
    /// with it can pass them (their other conditions are `and`ed to the pattern).
    by_prefix: HashMap<Vec<u8>, Vec<Subscriber>>,
    /// The distinct lengths of those prefixes: an event's path is looked up at these only.
    prefix_lengths: BTreeSet<usize>,
    /// Subscriptions with `event_types` or `categories` (and no `path_pattern`), by the set of
    /// type codes they can select: each group is offered only the events of its types.
    by_types: HashMap<BTreeSet<u16>, Vec<Subscriber>>,
    /// Every other subscription is offered every event.
    others: Vec<Subscriber>,
}

impl Subscribers {
    fn forget_empty_prefixes(&mut self) {
        self.by_prefix.retain(|_, subscribers| !subscribers.is_empty());
        self.prefix_lengths = self.by_prefix.keys().map(Vec::len).collect();
    }
}

/// The path the prefix index looks up.
fn event_path(event: &SemanticEvent) -> Option<&[u8]> {
    event.context.filesystem.as_ref()?.path.as_ref().map(crate::event::PathBytes::as_bytes)
}

/// Hands events to every subscriber; shared by the pipeline and the server.
#[derive(Default)]
pub struct Broadcaster {
    subscribers: Mutex<Subscribers>,
}

impl Broadcaster {
    /// Offers events (in output order, with their JSON from `to_json_lines`) to every
    /// subscriber; never blocks.
    pub fn publish(&self, events: &[SemanticEvent], lines: &[Arc<str>], counters: &Counters) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        let Subscribers { by_prefix, prefix_lengths, by_types, others } = &mut *subscribers;
        others.retain_mut(|subscriber| subscriber.offer(events.iter().zip(lines), counters));
        by_types.retain(|types, subscribers| {
            let group = events.iter().zip(lines).filter(|(event, _)| types.contains(&event.event_type_code));
            subscribers.retain_mut(|subscriber| subscriber.offer(group.clone(), counters));
            !subscribers.is_empty()
        });
        if by_prefix.is_empty() {
            return;
        }
        // The batch's events grouped by the indexed prefixes their paths start with (in order),
        // each group offered to that prefix's subscriptions only.
        let mut batch: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for (i, event) in events.iter().enumerate() {
            let Some(path) = event_path(event) else { continue };
            for &length in prefix_lengths.range(..=path.len()) {
                let prefix = &path[..length];
                if by_prefix.contains_key(prefix) {
                    batch.entry(prefix).or_default().push(i);
                }
            }
        }
        let mut emptied = false;
        for (prefix, indices) in batch {
            let Some(subscribers) = by_prefix.get_mut(prefix) else { continue };
            let group = indices.iter().map(|&i| (&events[i], &lines[i]));
            subscribers.retain_mut(|subscriber| subscriber.offer(group.clone(), counters));
            emptied |= subscribers.is_empty();
        }
        if emptied {
            subscribers.forget_empty_prefixes();
        }
    }

    /// Sends the gap notices still owed (a subscriber that missed events and has room again
    /// learns how many even when no further event comes), and forgets subscribers that have
    /// gone (whether or not an event for them came since).
    fn flush_gap_notices(&self) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = |subscriber: &mut Subscriber| {
            subscriber.send_gap_notice();
            !subscriber.sender.is_closed()
        };
        subscribers.others.retain_mut(keep);
        subscribers.by_types.retain(|_, subscribers| {
            subscribers.retain_mut(keep);
            !subscribers.is_empty()
        });
        let before = subscribers.by_prefix.len();
        subscribers.by_prefix.retain(|_, subscribers| {
            subscribers.retain_mut(keep);
            !subscribers.is_empty()
        });
        if subscribers.by_prefix.len() != before {
            subscribers.forget_empty_prefixes();
        }
    }

    /// Adds the subscription a stream request's query describes; its messages come out of the
    /// returned receiver.
    fn subscribe_query(
        &self,
        query: &BTreeMap<String, String>,
    ) -> Result<mpsc::Receiver<String>, FilterError> {
        let filter = subscription_filter(query)?;
        let policy = if query.get("slow").is_some_and(|p| p == "disconnect") {
            SlowPolicy::Disconnect
        } else {
            SlowPolicy::Drop
        };
        let buffer = query.get("buffer").and_then(|b| b.parse().ok()).unwrap_or(SUBSCRIBER_BUFFER).max(1);
        let (sender, receiver) = mpsc::channel(buffer);
        let subscriber = Subscriber { filter, sender, policy, next: 0, dropped: 0 };
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(prefix) = path_prefix(query) {
            subscribers.prefix_lengths.insert(prefix.len());
            subscribers.by_prefix.entry(prefix.as_bytes().to_vec()).or_default().push(subscriber);
        } else if let Some(types) = type_codes(query) {
            subscribers.by_types.entry(types).or_default().push(subscriber);
        } else {
            subscribers.others.push(subscriber);
        }
        Ok(receiver)
    }
}

/// The type codes a subscription can select by its `event_types` and `categories` (both must
/// match); `None` when it names neither, or a name that is not known (the filter reports it).
fn type_codes(query: &BTreeMap<String, String>) -> Option<BTreeSet<u16>> {
    let names = |key: &str| {
        query
            .get(key)
            .map(|list| list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect::<Vec<_>>())
    };
    let (types, categories) = (names("event_types"), names("categories"));
    if types.is_none() && categories.is_none() {
        return None;
    }
    let by_type: Option<BTreeSet<u16>> = match types {
        Some(types) => Some(
            types
                .iter()
                .map(|name| EventType::from_name(name).map(EventType::code))
                .collect::<Option<_>>()?,
        ),
        None => None,
    };
    Some(
        EventType::ALL
            .iter()
            .filter(|t| categories.as_ref().is_none_or(|c| c.contains(&t.category())))
            .map(|t| t.code())
            .filter(|code| by_type.as_ref().is_none_or(|codes| codes.contains(code)))
            .collect(),
    )
}

/// The literal start of a subscription's `path_pattern` (all of it when it has no glob
/// characters): every path the pattern matches starts with it.
fn path_prefix(query: &BTreeMap<String, String>) -> Option<&str> {
    let pattern = query.get("path_pattern")?;
    Some(pattern.find(GLOB_CHARACTERS).map_or(pattern.as_str(), |end| &pattern[..end]))
}

#[derive(Clone)]
struct ServerState {
    broadcaster: Arc<Broadcaster>,
    token: Option<String>,
}

/// Builds a subscription's filter from `VexFS`'s query parameters (`event_types`, `categories`,
/// `path_pattern`, `required_flags`) and ours (`filter`).
fn subscription_filter(query: &BTreeMap<String, String>) -> Result<FilterChain, FilterError> {
    let list = |values: &str| {
        values.split(',').map(str::trim).filter(|v| !v.is_empty()).collect::<Vec<_>>().join(", ")
    };
    let mut expressions = Vec::new();
    if let Some(types) = query.get("event_types") {
        expressions.push(format!("type in [{}]", list(types)));
    }
    if let Some(categories) = query.get("categories") {
        expressions.push(format!("category in [{}]", list(categories)));
    }
    if let Some(pattern) = query.get("path_pattern") {
        if pattern.contains(GLOB_CHARACTERS) {
            expressions.push(format!("path glob {pattern:?}"));
        } else {
            // The same events as the glob, compared without a regex.
            expressions.push(format!("path == {pattern:?}"));
        }
    }
    if let Some(flags) = query.get("required_flags") {
        expressions.push(format!("flags has {flags}"));
    }
    if let Some(filter) = query.get("filter") {
        expressions.push(filter.clone());
    }
    let macros = BTreeMap::new();
    let filters = expressions
        .iter()
        .enumerate()
        .map(|(i, text)| Filter::new(&format!("query[{i}]"), text, &macros))
        .collect::<Result<_, _>>()?;
    Ok(FilterChain { filters, ..FilterChain::default() })
}

fn authorized(state: &ServerState, headers: &HeaderMap, query: &BTreeMap<String, String>) -> bool {
    let Some(token) = &state.token else { return true };
    bearer_token(headers) == Some(token.as_str()) || query.get("token") == Some(token)
}

async fn stream(
    State(state): State<ServerState>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !authorized(&state, &headers, &query) {
        return (StatusCode::UNAUTHORIZED, "a valid token is required (Authorization: Bearer <token>)\n")
            .into_response();
    }
    let receiver = match state.broadcaster.subscribe_query(&query) {
        Ok(receiver) => receiver,
        Err(error) => {
            let cause = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
            return (StatusCode::BAD_REQUEST, format!("{error}: {cause}\n")).into_response();
        }
    };
    upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_INCOMING_MESSAGE)
        .max_frame_size(MAX_INCOMING_MESSAGE)
        .on_upgrade(move |socket| forward(socket, receiver))
}

/// Writes a subscription's messages to its socket until either side closes. Reading the socket
/// answers pings and notices a client that has gone even when no event comes for it.
async fn forward(mut socket: WebSocket, mut receiver: mpsc::Receiver<String>) {
    loop {
        tokio::select! {
            message = receiver.recv() => {
                let Some(message) = message else { break };
                if socket.send(Message::Text(message.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// Refuses a non-loopback address without a token, for the `server` (the event stream, the
/// control API) whose token option is `flag`.
///
/// # Errors
/// `RemoteWithoutToken` when `addr` is not loopback and there is no token.
pub fn require_token_for_remote(
    server: &'static str,
    flag: &'static str,
    addr: SocketAddr,
    token: Option<&str>,
) -> Result<(), StreamError> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(StreamError::RemoteWithoutToken { server, flag, addr });
    }
    Ok(())
}

/// The token an HTTP request presents as `Authorization: Bearer <token>`.
#[must_use]
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// A running stream server.
pub struct StreamServer {
    pub broadcaster: Arc<Broadcaster>,
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl StreamServer {
    /// Starts serving on `addr` (its own runtime, two worker threads).
    ///
    /// # Errors
    /// A non-loopback address without a token, or an address that cannot be bound.
    pub fn start(addr: SocketAddr, token: Option<String>) -> Result<Self, StreamError> {
        require_token_for_remote(STREAM_SERVER, STREAM_TOKEN_FLAG, addr, token.as_deref())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vexevent-stream")
            // No signal driver here: signals belong to the main runtime (with two signal
            // drivers, SIGINT would wake the wrong one).
            .enable_io()
            .enable_time()
            .build()
            .map_err(StreamError::Runtime)?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|source| StreamError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| StreamError::Bind { addr, source })?;
        let broadcaster = Arc::new(Broadcaster::default());
        let state = ServerState { broadcaster: Arc::clone(&broadcaster), token };
        let app = Router::new().route(STREAM_PATH, get(stream)).with_state(state);
        runtime.spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the event stream server stopped");
            }
        });
        // Owed gap notices and departed subscribers are dealt with here, on the server's own
        // threads, not on the pipeline thread that publishes.
        let notices = Arc::clone(&broadcaster);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(GAP_NOTICE_PERIOD);
            loop {
                tick.tick().await;
                notices.flush_gap_notices();
            }
        });
        Ok(Self { broadcaster, addr, _runtime: runtime })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::EventType, pipeline::to_json_lines};

    fn subscribe(broadcaster: &Broadcaster, query: &[(&str, &str)]) -> mpsc::Receiver<String> {
        let query = query.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        broadcaster.subscribe_query(&query).unwrap()
    }

    fn publish(broadcaster: &Broadcaster, events: &[(EventType, &str)], counters: &Counters) {
        let events: Vec<SemanticEvent> =
            events.iter().map(|(kind, path)| SemanticEvent::sample(*kind, path, 1, "test", true)).collect();
        broadcaster.publish(&events, &to_json_lines(&events, counters), counters);
    }

    /// (`subscription_sequence`, event path) of every message waiting.
    fn received(receiver: &mut mpsc::Receiver<String>) -> Vec<(u64, String)> {
        std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|text| {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                let path = message["event"]["context"]["filesystem"]["path"].as_str().unwrap().to_owned();
                (message["subscription_sequence"].as_u64().unwrap(), path)
            })
            .collect()
    }

    fn count(broadcaster: &Broadcaster) -> usize {
        let subscribers = broadcaster.subscribers.lock().unwrap();
        subscribers.others.len()
            + subscribers.by_prefix.values().map(Vec::len).sum::<usize>()
            + subscribers.by_types.values().map(Vec::len).sum::<usize>()
    }

    #[test]
    fn exact_paths_globs_and_types_each_get_their_events_in_order() {
        let broadcaster = Broadcaster::default();
        let counters = Counters::default();
        let mut exact = subscribe(&broadcaster, &[("path_pattern", "/w/a")]);
        let mut exact_write =
            subscribe(&broadcaster, &[("path_pattern", "/w/a"), ("event_types", "FilesystemWrite")]);
        let mut glob = subscribe(&broadcaster, &[("path_pattern", "/w/[ab]")]);
        let mut mkdirs = subscribe(&broadcaster, &[("event_types", "FilesystemMkdir")]);
        let mut creates_and_writes =
            subscribe(&broadcaster, &[("event_types", "FilesystemWrite, FilesystemCreate")]);
        let mut filesystem = subscribe(&broadcaster, &[("categories", "filesystem")]);
        let mut vector = subscribe(&broadcaster, &[("categories", "vector")]);
        let mut mkdirs_by_both =
            subscribe(&broadcaster, &[("categories", "filesystem"), ("event_types", "FilesystemMkdir")]);
        let mut far = subscribe(&broadcaster, &[("path_pattern", "/elsewhere/**")]);
        {
            let subscribers = broadcaster.subscribers.lock().unwrap();
            assert_eq!(subscribers.by_prefix.len(), 3, "exact path and globs are indexed by literal prefix");
            assert_eq!(subscribers.by_types.len(), 4, "types and categories are indexed by type set");
            assert!(subscribers.others.is_empty());
        }
        for _ in 0..2 {
            publish(
                &broadcaster,
                &[
                    (EventType::FilesystemCreate, "/w/a"),
                    (EventType::FilesystemWrite, "/w/b"),
                    (EventType::FilesystemWrite, "/w/a"),
                    (EventType::FilesystemMkdir, "/w/d"),
                    (EventType::FilesystemWrite, "/w/ab"),
                ],
                &counters,
            );
        }
        let numbered = |paths: &[&str]| -> Vec<(u64, String)> {
            paths.iter().enumerate().map(|(i, p)| (i as u64, (*p).to_owned())).collect()
        };
        assert_eq!(received(&mut exact), numbered(&["/w/a"; 4]));
        assert_eq!(received(&mut exact_write), numbered(&["/w/a"; 2]));
        assert_eq!(received(&mut glob), numbered(&["/w/a", "/w/b", "/w/a", "/w/a", "/w/b", "/w/a"]));
        assert_eq!(received(&mut mkdirs), numbered(&["/w/d"; 2]));
        assert_eq!(
            received(&mut creates_and_writes),
            numbered(&["/w/a", "/w/b", "/w/a", "/w/ab", "/w/a", "/w/b", "/w/a", "/w/ab"]),
            "in output order across its types"
        );
        assert_eq!(received(&mut filesystem).len(), 10);
        assert!(received(&mut vector).is_empty());
        assert_eq!(received(&mut mkdirs_by_both), numbered(&["/w/d"; 2]));
        assert!(received(&mut far).is_empty());
    }

    #[test]
    fn a_subscriber_that_has_gone_is_forgotten_without_an_event_for_it() {
        let broadcaster = Broadcaster::default();
        let exact = subscribe(&broadcaster, &[("path_pattern", "/w/a")]);
        let other = subscribe(&broadcaster, &[("event_types", "FilesystemMkdir")]);
        let _stays = subscribe(&broadcaster, &[("path_pattern", "/w/b")]);
        drop((exact, other));
        broadcaster.flush_gap_notices();
        assert_eq!(count(&broadcaster), 1);
    }
}
