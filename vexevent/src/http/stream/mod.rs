//! The live stream server: a WebSocket endpoint at `/api/v1/semantic/events/stream` (`VexFS`'s
//! path) on its own runtime, where each subscriber gets the events its query selects (see
//! `query`), numbered per subscription, through the subscriber index (see `subscribers`). Every
//! request must carry the token (generated at start, or configured); off loopback only with a
//! configured one. Subscriptions and connections are bounded (`StreamConfig`).
//!
//! On a cluster member, `session=INDEX[&wait_ms=MS]` opens a subscription only once this member
//! applied that log index (or refuses it with the reason), and `from=INDEX[&skip=K]` serves the
//! committed log from there instead of the live events, as a resumable stream (`follow`).

mod query;
mod stage;
mod subscribers;

use std::{collections::BTreeMap, net::SocketAddr, num::NonZeroUsize, sync::Arc};

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

pub use stage::StreamStage;
pub use subscribers::Broadcaster;

use super::{
    auth::{AuthError, Keys, Token, bearer_token, require_tls_for_remote, require_token_for_remote},
    control::{SESSION_WAIT_DEFAULT_MS, SESSION_WAIT_MAX_MS},
    follow::{self, Follow, LogParams},
    serve,
    tls::{self, TlsError, TlsFiles},
};
use crate::telemetry::Counters;
use query::Subscription;

/// The stream's path, as `VexFS`'s semantic API defined it.
pub const STREAM_PATH: &str = "/api/v1/semantic/events/stream";

/// Initial read buffer of a connection (tungstenite's default is 128 KiB, touched on the first
/// read): subscribers only send control frames (close, ping), at most 139 bytes each, and the
/// buffer grows if a larger frame comes.
const READ_BUFFER: usize = 256;

/// Largest message a subscriber may send: it has nothing to say beyond control frames, and an
/// unbounded message would let one client make the server allocate without limit.
const MAX_INCOMING_MESSAGE: usize = 64 * 1024;

/// How often a subscriber is pinged: its pong is traffic, so a quiet subscription is not closed as
/// idle (`listener::IDLE_TIMEOUT`), and one whose client has gone is noticed.
const PING_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

/// How often owed gap notices are sent and departed subscribers forgotten.
const GAP_NOTICE_PERIOD: std::time::Duration = std::time::Duration::from_millis(10);

/// The stream server and its token option, as errors name them.
pub const STREAM_SERVER: &str = "event stream";
pub const STREAM_TOKEN_FLAG: &str = "--stream-token";

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("cannot listen on {addr}: {source}; choose another --stream-addr")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the stream runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// `[stream]`: the live WebSocket stream (`vexevent tail` and other subscribers).
#[derive(Clone, Debug, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Address to serve `/api/v1/semantic/events/stream` on (e.g. "127.0.0.1:7878"); absent:
    /// no stream. A non-loopback address needs `token`.
    pub addr: Option<SocketAddr>,
    /// Token subscribers must present (`Authorization: Bearer <token>` or `?token=`); absent:
    /// the token generated at start (in the token file).
    pub token: Option<Token>,
    /// Connections held at once (subscribers and requests being answered); more are refused.
    pub max_connections: NonZeroUsize,
    /// Subscriptions at once; more are refused.
    pub max_subscribers: NonZeroUsize,
    /// Largest `buffer` (messages) a subscription may ask for.
    pub max_buffer: NonZeroUsize,
    /// Serve WSS with this certificate and key; absent: plain WebSocket.
    pub tls: Option<TlsFiles>,
    /// Serve plain WebSocket off loopback anyway (behind a TLS proxy on the same host).
    pub plaintext_off_loopback: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            addr: None,
            token: None,
            // Room for the 15,000 subscribers the benchmark connects (4.5 KiB each).
            max_connections: NonZeroUsize::new(16_384).expect("non-zero"),
            max_subscribers: NonZeroUsize::new(16_384).expect("non-zero"),
            // 16 times the default buffer; a full one holds tens of MiB of events.
            max_buffer: NonZeroUsize::new(65_536).expect("non-zero"),
            tls: None,
            plaintext_off_loopback: false,
        }
    }
}

impl StreamConfig {
    /// What is wrong with it: a non-loopback address without a token.
    #[must_use]
    pub fn problem(&self) -> Option<AuthError> {
        Self::check_remote(self, self.addr?).err()
    }

    /// A non-loopback `addr` needs a token and TLS (or plain text explicitly allowed).
    fn check_remote(&self, addr: SocketAddr) -> Result<(), AuthError> {
        require_token_for_remote(STREAM_SERVER, STREAM_TOKEN_FLAG, addr, self.token.as_ref())?;
        require_tls_for_remote(STREAM_SERVER, "stream", addr, self.tls.is_some(), self.plaintext_off_loopback)
    }
}

#[derive(Clone)]
struct ServerState {
    broadcaster: Arc<Broadcaster>,
    token: Token,
    /// One permit per subscription, held until its connection ends.
    subscriptions: Arc<Semaphore>,
    max_subscribers: usize,
    max_buffer: usize,
    /// Where the cluster member is, if this instance is one.
    counters: Arc<Counters>,
}

fn authorized(state: &ServerState, headers: &HeaderMap, query: &BTreeMap<String, String>) -> bool {
    [bearer_token(headers), query.get("token").map(String::as_str)]
        .into_iter()
        .flatten()
        .any(|presented| state.token.matches(presented))
}

/// What a stream request is served.
enum Serve {
    /// The live events its query selects.
    Live(Subscription),
    /// The committed log from a position.
    Log(Follow),
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
    let log = match LogParams::parse(&query, SESSION_WAIT_DEFAULT_MS, SESSION_WAIT_MAX_MS) {
        Ok(log) => log,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    let cluster = state.counters.cluster.get().map(Arc::clone);
    if log.from.is_some() || log.session.is_some() {
        let Some(cluster) = &cluster else {
            return (
                StatusCode::NOT_FOUND,
                "from= and session= need a cluster member (no [cluster] in its configuration)\n",
            )
                .into_response();
        };
        if let Some(session) = log.session {
            if let Err(refused) = follow::session_applied(cluster.as_ref(), session, log.wait_ms).await {
                return (StatusCode::SERVICE_UNAVAILABLE, format!("{refused}\n")).into_response();
            }
        }
    }
    let subscription = match (log.from, cluster) {
        (Some(from), Some(cluster)) => {
            if let Err(error) = cluster.log(from, 1) {
                return (StatusCode::GONE, format!("{error}\n")).into_response();
            }
            Serve::Log(Follow::new(cluster, from, log.skip))
        }
        _ => match Subscription::parse(&query, state.max_buffer) {
            Ok(subscription) => Serve::Live(subscription),
            Err(error) => {
                let cause = std::error::Error::source(&error).map(|c| format!(": {c}")).unwrap_or_default();
                return (StatusCode::BAD_REQUEST, format!("{error}{cause}\n")).into_response();
            }
        },
    };
    let Ok(place) = Arc::clone(&state.subscriptions).try_acquire_owned() else {
        let limit = state.max_subscribers;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!("the stream holds its limit of {limit} subscribers; try again later\n"),
        )
            .into_response();
    };
    let upgrade = upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_INCOMING_MESSAGE)
        .max_frame_size(MAX_INCOMING_MESSAGE);
    match subscription {
        Serve::Live(subscription) => {
            let receiver = state.broadcaster.subscribe(subscription);
            upgrade.on_upgrade(move |socket| forward(socket, receiver, place))
        }
        Serve::Log(follow) => upgrade.on_upgrade(move |socket| forward_log(socket, follow, place)),
    }
}

/// Writes the committed log to a socket, one message per line of [`Follow`], each once the
/// last was sent (the reader's pace; nothing queues), until either side closes or the stream
/// ends (its last message says why).
async fn forward_log(mut socket: WebSocket, mut follow: Follow, place: OwnedSemaphorePermit) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
    'serve: loop {
        tokio::select! {
            _ = ping.tick() => {
                if socket.send(Message::Ping(axum::body::Bytes::new())).await.is_err() {
                    break;
                }
            }
            lines = follow.next() => {
                let Some(lines) = lines else { break };
                for line in lines.lines() {
                    if socket.send(Message::Text(line.into())).await.is_err() {
                        break 'serve;
                    }
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
    drop(place);
}

/// Writes a subscription's messages to its socket until either side closes. Reading the socket
/// answers pings and notices a client that has gone even when no event comes for it.
/// The subscription's `place` under the limit is given back when this returns.
async fn forward(mut socket: WebSocket, mut receiver: mpsc::Receiver<String>, place: OwnedSemaphorePermit) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if socket.send(Message::Ping(axum::body::Bytes::new())).await.is_err() {
                    break;
                }
            }
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
    drop(place);
}

/// A running stream server.
pub struct StreamServer {
    pub broadcaster: Arc<Broadcaster>,
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl StreamServer {
    /// Starts serving on `addr` (its own runtime, two worker threads) as `config` says, with
    /// the generated `keys` unless it has a token of its own; refusals are counted in
    /// `counters`.
    ///
    /// # Errors
    /// A non-loopback address without a token, or an address that cannot be bound.
    pub fn start(
        addr: SocketAddr,
        config: &StreamConfig,
        keys: &Keys,
        counters: Arc<Counters>,
    ) -> Result<Self, StreamError> {
        config.check_remote(addr)?;
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let token = config.token.clone().unwrap_or_else(|| keys.token.clone());
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
        let state = ServerState {
            broadcaster: Arc::clone(&broadcaster),
            token,
            subscriptions: Arc::new(Semaphore::new(config.max_subscribers.get())),
            max_subscribers: config.max_subscribers.get(),
            max_buffer: config.max_buffer.get(),
            counters: Arc::clone(&counters),
        };
        let app = Router::new().route(STREAM_PATH, get(stream)).with_state(state);
        serve(runtime.handle(), listener, app, STREAM_SERVER, config.max_connections.get(), counters, tls);
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
