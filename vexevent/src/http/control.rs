//! The control API over HTTP: `POST /api/v1/control/reload` reloads filters and routes (like
//! SIGHUP) and answers whether it worked; `GET /api/v1/control/stats` returns the current stats
//! snapshot as JSON, and `GET /metrics` the same counters for Prometheus; `POST
//! /api/v1/control/rollback/{seq}` undoes the rule action recorded at that audit line (like
//! `vexevent rollback`) and records the rollback. Every request must
//! carry `Authorization: Bearer <token>`: the token (generated at start, or configured) for
//! everything, the read-only metrics token for the stats and metrics. Requests are served by the
//! main loop, which owns the state.

use std::{net::SocketAddr, num::NonZeroUsize, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::sync::{mpsc, oneshot};

use super::{
    auth::{
        AuthError, Keys, Token, bearer_token, require_tls_for_remote, require_token_for_remote, resolve_group,
    },
    dashboard::{
        self, DASHBOARD_EVENTS_PATH, DASHBOARD_LOGIN_API_PATH, DASHBOARD_LOGIN_PATH, DASHBOARD_PATH, Logins,
    },
    follow::{self, Follow},
    serve,
    tls::{self, TlsFiles},
};
use crate::telemetry::{Counters, MemberChange, MemberChangeError, StatsSnapshot, prometheus_text};

/// The control API's paths.
pub const RELOAD_PATH: &str = "/api/v1/control/reload";
pub const STATS_PATH: &str = "/api/v1/control/stats";
/// Followed by `/{seq}`: the audit line of the action to undo.
pub const ROLLBACK_PATH: &str = "/api/v1/control/rollback";
/// The cluster member's view (`vexevent cluster status`) and the committed log (`vexevent log`).
pub const CLUSTER_STATUS_PATH: &str = "/api/v1/cluster/status";
pub const CLUSTER_LOG_PATH: &str = "/api/v1/cluster/log";
/// `POST` a [`MemberAdd`] adds a member; `DELETE .../{id}` removes one (`vexevent cluster add`,
/// `remove`).
pub const CLUSTER_MEMBERS_PATH: &str = "/api/v1/cluster/members";
/// The response header that says which log index to ask for next.
pub const NEXT_INDEX_HEADER: &str = "x-vexevent-next-index";
/// Most entries one log request returns.
pub const LOG_ENTRIES_MAX: usize = 64;
/// How long a log request with a session waits, by default and at most, for this member to
/// apply the session's index.
pub const SESSION_WAIT_DEFAULT_MS: u64 = 5_000;
pub const SESSION_WAIT_MAX_MS: u64 = 60_000;
pub const METRICS_PATH: &str = "/metrics";
/// Liveness (200 while the instance serves) and readiness (200 when every check passes, else
/// 503), both with the checks and their reasons as JSON.
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";

/// The control API and its token option, as errors name them.
pub const CONTROL_SERVER: &str = "control API";
pub const CONTROL_TOKEN_FLAG: &str = "--control-token";

/// `[control]`: the control API (reload, stats, metrics) over HTTP.
#[derive(Clone, Debug, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Address to serve `/api/v1/control/*` and `/metrics` on (e.g. "127.0.0.1:7879"); absent:
    /// no control API (SIGHUP still reloads). A non-loopback address needs `token`.
    pub addr: Option<SocketAddr>,
    /// Token every request must present (`Authorization: Bearer <token>`); absent: the token
    /// generated at start (in the token file).
    pub token: Option<Token>,
    /// Group (name or id) that may read the metrics token file, for a Prometheus server that
    /// does not run as root; absent: root only.
    pub metrics_group: Option<String>,
    /// Connections held at once; more are refused.
    pub max_connections: NonZeroUsize,
    /// Serve HTTPS with this certificate and key; absent: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP off loopback anyway (behind a TLS proxy on the same host).
    pub plaintext_off_loopback: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        // A few operators and a Prometheus server, with room to spare.
        Self {
            addr: None,
            token: None,
            metrics_group: None,
            max_connections: NonZeroUsize::new(64).expect("non-zero"),
            tls: None,
            plaintext_off_loopback: false,
        }
    }
}

impl ControlConfig {
    /// What is wrong with it: a non-loopback address without a token, a metrics group that
    /// does not exist.
    #[must_use]
    pub fn problem(&self) -> Option<AuthError> {
        if let Err(error) = self.metrics_gid() {
            return Some(error);
        }
        let addr = self.addr?;
        require_token_for_remote(CONTROL_SERVER, CONTROL_TOKEN_FLAG, addr, self.token.as_ref())
            .and_then(|()| {
                require_tls_for_remote(
                    CONTROL_SERVER,
                    "control",
                    addr,
                    self.tls.is_some(),
                    self.plaintext_off_loopback,
                )
            })
            .err()
    }

    /// The group that may read the metrics token, if one is configured.
    ///
    /// # Errors
    /// When it is not a known group.
    pub fn metrics_gid(&self) -> Result<Option<u32>, AuthError> {
        self.metrics_group.as_deref().map(resolve_group).transpose()
    }
}

/// A request for the main loop.
pub enum ControlRequest {
    /// Reload; the answer is the outcome as text.
    Reload(oneshot::Sender<Result<String, String>>),
    Stats(oneshot::Sender<StatsSnapshot>),
    /// Roll back the action recorded at audit line `seq`; the answer is the outcome as text.
    Rollback {
        seq: u64,
        answer: oneshot::Sender<Result<String, String>>,
    },
}

#[derive(Clone)]
pub(super) struct ControlState {
    requests: mpsc::Sender<ControlRequest>,
    /// Admits to everything.
    token: Token,
    /// Admits to reading the counters.
    metrics: Token,
    /// The health checks and the analyse stage's summaries.
    pub(super) counters: Arc<Counters>,
    /// The dashboard's login codes and sessions.
    pub(super) logins: Arc<Logins>,
}

impl ControlState {
    /// Whether the request may do everything (`read_only` false) or read the counters.
    pub(super) fn authorized(&self, headers: &HeaderMap, read_only: bool) -> bool {
        bearer_token(headers).is_some_and(|presented| {
            self.token.matches(presented) || (read_only && self.metrics.matches(presented))
        })
    }

    /// Hands a request to the main loop and waits for its answer.
    async fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> ControlRequest) -> Option<T> {
        let (answer, answered) = oneshot::channel();
        self.requests.send(request(answer)).await.ok()?;
        answered.await.ok()
    }
}

pub(super) const UNAUTHORIZED: (StatusCode, &str) =
    (StatusCode::UNAUTHORIZED, "a valid token is required (Authorization: Bearer <token>)\n");
const STOPPING: (StatusCode, &str) = (StatusCode::SERVICE_UNAVAILABLE, "vexevent is stopping\n");

async fn reload(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if !state.authorized(&headers, false) {
        return UNAUTHORIZED.into_response();
    }
    match state.ask(ControlRequest::Reload).await {
        Some(Ok(report)) => (StatusCode::OK, format!("{report}\n")).into_response(),
        Some(Err(error)) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{error}\n")).into_response(),
        None => STOPPING.into_response(),
    }
}

async fn rollback(
    State(state): State<ControlState>,
    Path(seq): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !state.authorized(&headers, false) {
        return UNAUTHORIZED.into_response();
    }
    let Ok(seq) = seq.parse::<u64>() else {
        return (StatusCode::BAD_REQUEST, "the audit line must be a number\n").into_response();
    };
    match state.ask(|answer| ControlRequest::Rollback { seq, answer }).await {
        Some(Ok(report)) => (StatusCode::OK, format!("{report}\n")).into_response(),
        Some(Err(error)) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{error}\n")).into_response(),
        None => STOPPING.into_response(),
    }
}

async fn stats(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if !state.authorized(&headers, true) {
        return UNAUTHORIZED.into_response();
    }
    match state.ask(ControlRequest::Stats).await {
        Some(snapshot) => Json(snapshot).into_response(),
        None => STOPPING.into_response(),
    }
}

async fn metrics(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if !state.authorized(&headers, true) {
        return UNAUTHORIZED.into_response();
    }
    let Some(snapshot) = state.ask(ControlRequest::Stats).await else { return STOPPING.into_response() };
    match prometheus_text(snapshot) {
        Ok(text) => ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n").into_response(),
    }
}

const NOT_A_MEMBER: (StatusCode, &str) =
    (StatusCode::NOT_FOUND, "this instance is not a cluster member (no [cluster] in its configuration)\n");

async fn cluster_status(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if !state.authorized(&headers, true) {
        return UNAUTHORIZED.into_response();
    }
    match state.counters.cluster.get() {
        Some(cluster) => Json(cluster.status().await).into_response(),
        None => NOT_A_MEMBER.into_response(),
    }
}

/// The member to add: its raft id and the address its peer protocol listens at.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberAdd {
    pub id: u64,
    pub addr: SocketAddr,
}

/// Makes a membership change through the cluster (the full token): 200 with what was done,
/// 422 with why it does not fit, 503 when it cannot be made now.
async fn change_members(state: &ControlState, headers: &HeaderMap, change: MemberChange) -> Response {
    if !state.authorized(headers, false) {
        return UNAUTHORIZED.into_response();
    }
    let Some(cluster) = state.counters.cluster.get() else { return NOT_A_MEMBER.into_response() };
    match cluster.change(change).await {
        Ok(done) => (StatusCode::OK, format!("{done}\n")).into_response(),
        Err(MemberChangeError::Refused(why)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")).into_response()
        }
        Err(MemberChangeError::Unavailable(why)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
        }
    }
}

async fn add_member(
    State(state): State<ControlState>,
    headers: HeaderMap,
    body: Result<Json<MemberAdd>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(MemberAdd { id, addr })) => {
            change_members(&state, &headers, MemberChange::Add { id, addr }).await
        }
        Err(rejection) if state.authorized(&headers, false) => (
            StatusCode::BAD_REQUEST,
            format!("expected {{\"id\": RAFT_ID, \"addr\": \"IP:PORT\"}} ({rejection})\n"),
        )
            .into_response(),
        Err(_) => UNAUTHORIZED.into_response(),
    }
}

async fn remove_member(
    State(state): State<ControlState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match id.parse::<u64>() {
        Ok(id) => change_members(&state, &headers, MemberChange::Remove { id }).await,
        Err(_) if state.authorized(&headers, false) => {
            (StatusCode::BAD_REQUEST, "the member to remove is a raft id (a number)\n").into_response()
        }
        Err(_) => UNAUTHORIZED.into_response(),
    }
}

/// `from` (a log index), `skip` (events of that entry the reader has), `limit` (entries, at
/// most [`LOG_ENTRIES_MAX`]), `follow` (a live stream, see `follow`), and a reader's `session`
/// (the last log index it saw, on any member) with how long to wait for it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    from: u64,
    #[serde(default)]
    skip: u64,
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
    session: Option<u64>,
    wait_ms: Option<u64>,
}

/// Committed events from a log index, as JSON lines; the next index in a header. With
/// `follow=true`, the live stream of `follow` (JSON lines with each event's position). An index
/// already compacted is refused (410) with the first retained one.
async fn cluster_log(
    State(state): State<ControlState>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if !state.authorized(&headers, false) {
        return UNAUTHORIZED.into_response();
    }
    let Ok(axum::extract::Query(query)) = query else {
        return (
            StatusCode::BAD_REQUEST,
            "expected ?from=INDEX[&skip=EVENTS][&limit=ENTRIES][&follow=true][&session=INDEX[&wait_ms=MS]]\n",
        )
            .into_response();
    };
    let Some(cluster) = state.counters.cluster.get() else { return NOT_A_MEMBER.into_response() };
    if let Some(session) = query.session {
        let wait_ms = query.wait_ms.unwrap_or(SESSION_WAIT_DEFAULT_MS).min(SESSION_WAIT_MAX_MS);
        if let Err(refused) = follow::session_applied(cluster.as_ref(), session, wait_ms).await {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{refused}\n")).into_response();
        }
    }
    let limit =
        if query.follow { 1 } else { query.limit.unwrap_or(LOG_ENTRIES_MAX).clamp(1, LOG_ENTRIES_MAX) };
    let page = match cluster.log(query.from, limit) {
        Ok(page) => page,
        Err(error) => return (StatusCode::GONE, format!("{error}\n")).into_response(),
    };
    if query.follow {
        let follow = Follow::new(Arc::clone(cluster), query.from, query.skip);
        let lines = futures_util::stream::unfold(follow, |mut follow| async move {
            let lines = follow.next().await?;
            Some((Ok::<_, std::convert::Infallible>(lines), follow))
        });
        return ([(CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(lines))
            .into_response();
    }
    let mut lines = String::new();
    for entry in &page.entries {
        for (_, event) in entry.after((query.from, query.skip)) {
            lines.push_str(event);
            lines.push('\n');
        }
    }
    (
        [
            (CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (NEXT_INDEX_HEADER.parse().expect("a valid header name"), page.next.to_string()),
        ],
        lines,
    )
        .into_response()
}

/// The health checks; `ready` answers 503 when one fails.
fn health(state: &ControlState, headers: &HeaderMap, ready: bool) -> Response {
    if !state.authorized(headers, true) {
        return UNAUTHORIZED.into_response();
    }
    let report = state.counters.health.check(&state.counters);
    let status = if ready && !report.ready { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, Json(report)).into_response()
}

async fn healthz(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    health(&state, &headers, false)
}

async fn readyz(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    health(&state, &headers, true)
}

/// Binds `addr` and serves the API on the current tokio runtime as `config` says (with the
/// generated `keys` unless it has a token of its own; refusals counted in `counters`); requests
/// arrive on the returned receiver. The third value is the dashboard's first one-time login URL.
///
/// # Errors
/// When the address cannot be bound (or no login code can be drawn).
pub async fn start(
    addr: SocketAddr,
    config: &ControlConfig,
    keys: &Keys,
    counters: Arc<Counters>,
) -> std::io::Result<(SocketAddr, mpsc::Receiver<ControlRequest>, String)> {
    let tls = config.tls.as_ref().map(tls::acceptor).transpose().map_err(std::io::Error::other)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let (requests, received) = mpsc::channel(8);
    let logins = Arc::new(Logins::default());
    let code = logins.issue().map_err(std::io::Error::other)?;
    let app = Router::new()
        .route(RELOAD_PATH, post(reload))
        .route(STATS_PATH, get(stats))
        .route(&format!("{ROLLBACK_PATH}/{{seq}}"), post(rollback))
        .route(METRICS_PATH, get(metrics))
        .route(HEALTHZ_PATH, get(healthz))
        .route(READYZ_PATH, get(readyz))
        .route(CLUSTER_STATUS_PATH, get(cluster_status))
        .route(CLUSTER_LOG_PATH, get(cluster_log))
        .route(CLUSTER_MEMBERS_PATH, post(add_member))
        .route(&format!("{CLUSTER_MEMBERS_PATH}/{{id}}"), axum::routing::delete(remove_member))
        .route(DASHBOARD_PATH, get(dashboard::page))
        .route("/dashboard/assets/{name}", get(dashboard::asset))
        .route(DASHBOARD_LOGIN_PATH, get(dashboard::login))
        .route(DASHBOARD_EVENTS_PATH, get(dashboard::events))
        .route(DASHBOARD_LOGIN_API_PATH, post(dashboard::new_login))
        .with_state(ControlState {
            requests,
            token: config.token.clone().unwrap_or_else(|| keys.token.clone()),
            metrics: keys.metrics.clone(),
            counters: Arc::clone(&counters),
            logins,
        });
    let runtime = tokio::runtime::Handle::current();
    serve(&runtime, listener, app, CONTROL_SERVER, config.max_connections.get(), counters, tls);
    Ok((bound, received, format!("{scheme}://{bound}{DASHBOARD_LOGIN_PATH}?code={code}")))
}
