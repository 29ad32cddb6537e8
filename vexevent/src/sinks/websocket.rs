//! The live stream: a WebSocket server at `/api/v1/semantic/events/stream` (`VexFS`'s path) where
//! each subscriber gets the events its query selects (`VexFS`'s query filters plus our filter
//! language), numbered per subscription. A subscriber that falls behind its bounded buffer is
//! not allowed to stall the others: its excess events are dropped and it gets a gap notice with
//! the count before the next event (or, with `slow=disconnect`, it is disconnected). The server
//! binds to loopback unless a token is configured; with a token every request must carry it.

use std::{
    collections::BTreeMap,
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
    event::SemanticEvent,
    filter::{Filter, FilterChain, FilterError},
    telemetry::{Counters, add},
};

/// The stream's path, as `VexFS`'s semantic API defined it.
pub const STREAM_PATH: &str = "/api/v1/semantic/events/stream";

/// Messages a subscriber's buffer holds before it counts as slow.
const SUBSCRIBER_BUFFER: usize = 4096;

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "the event stream would listen on {addr}, which is not loopback; set a token (--stream-token) for remote access"
    )]
    RemoteWithoutToken { addr: SocketAddr },
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

/// Hands events to every subscriber; shared by the pipeline and the server.
#[derive(Default)]
pub struct Broadcaster {
    subscribers: Mutex<Vec<Subscriber>>,
}

impl Broadcaster {
    /// Offers events (in output order, with their JSON from `to_json_lines`) to every
    /// subscriber; never blocks.
    pub fn publish(&self, events: &[SemanticEvent], lines: &[String], counters: &Counters) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        subscribers.retain_mut(|subscriber| {
            for (event, json) in events.iter().zip(lines) {
                if subscriber.filter.check(event).is_none() {
                    continue;
                }
                subscriber.send_gap_notice();
                let message = format!(r#"{{"subscription_sequence":{},"event":{json}}}"#, subscriber.next);
                match subscriber.sender.try_send(message) {
                    Ok(()) => subscriber.next += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        add(&counters.stream_dropped, 1);
                        if subscriber.policy == SlowPolicy::Disconnect {
                            add(&counters.stream_disconnected, 1);
                            return false;
                        }
                        subscriber.dropped += 1;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }

    /// Sends the gap notices still owed (a subscriber that missed events and has room again
    /// learns how many even when no further event comes).
    pub fn flush_gap_notices(&self) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        for subscriber in subscribers.iter_mut() {
            subscriber.send_gap_notice();
        }
    }

    fn subscribe(&self, subscriber: Subscriber) {
        self.subscribers.lock().unwrap_or_else(PoisonError::into_inner).push(subscriber);
    }
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
        expressions.push(format!("path glob {pattern:?}"));
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
    let bearer =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    bearer == Some(token.as_str()) || query.get("token") == Some(token)
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
    let filter = match subscription_filter(&query) {
        Ok(filter) => filter,
        Err(error) => {
            let cause = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
            return (StatusCode::BAD_REQUEST, format!("{error}: {cause}\n")).into_response();
        }
    };
    let policy = if query.get("slow").is_some_and(|p| p == "disconnect") {
        SlowPolicy::Disconnect
    } else {
        SlowPolicy::Drop
    };
    let buffer = query.get("buffer").and_then(|b| b.parse().ok()).unwrap_or(SUBSCRIBER_BUFFER).max(1);
    let (sender, receiver) = mpsc::channel(buffer);
    state.broadcaster.subscribe(Subscriber { filter, sender, policy, next: 0, dropped: 0 });
    upgrade.on_upgrade(move |socket| forward(socket, receiver))
}

/// Writes a subscription's messages to its socket until either side closes.
async fn forward(mut socket: WebSocket, mut receiver: mpsc::Receiver<String>) {
    while let Some(message) = receiver.recv().await {
        if socket.send(Message::Text(message.into())).await.is_err() {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// Refuses a non-loopback stream address without a token.
///
/// # Errors
/// `RemoteWithoutToken` when `addr` is not loopback and there is no token.
pub fn require_token_for_remote(addr: SocketAddr, token: Option<&str>) -> Result<(), StreamError> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(StreamError::RemoteWithoutToken { addr });
    }
    Ok(())
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
        require_token_for_remote(addr, token.as_deref())?;
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
        Ok(Self { broadcaster, addr, _runtime: runtime })
    }
}
