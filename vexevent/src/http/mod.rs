//! The HTTP edge: everything vexevent serves over HTTP (the live event stream, the control API
//! with its Prometheus endpoint), who may use it (bearer tokens, generated at start into files
//! only root can read; no cross-site browser requests) and how much of it (limits).

mod auth;
pub mod control;
mod dashboard;
pub(crate) mod follow;
mod guard;
mod listener;
mod stream;
mod tls;

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::telemetry::Counters;
use guard::Guard;
use listener::{BoundedListener, Peer};

pub use auth::{AuthError, Keys, TOKEN_FILE, Token, read_token_file};
pub use control::{
    CLUSTER_LOG_PATH, CLUSTER_MEMBERS_PATH, CLUSTER_STATUS_PATH, CONTROL_SERVER, CONTROL_TOKEN_FLAG,
    ControlConfig, ControlRequest, HEALTHZ_PATH, LOG_ENTRIES_MAX, METRICS_PATH, MemberAdd, NEXT_INDEX_HEADER,
    READYZ_PATH, RELOAD_PATH, ROLLBACK_PATH, SESSION_WAIT_DEFAULT_MS, SESSION_WAIT_MAX_MS, STATS_PATH,
};
pub use dashboard::{DASHBOARD_EVENTS_PATH, DASHBOARD_LOGIN_API_PATH, DASHBOARD_LOGIN_PATH, DASHBOARD_PATH};
pub use follow::HEARTBEAT as FOLLOW_HEARTBEAT;
pub use stream::{
    Broadcaster, STREAM_PATH, STREAM_SERVER, STREAM_TOKEN_FLAG, StreamConfig, StreamError, StreamServer,
    StreamStage,
};
pub use tls::{TlsError, TlsFiles, client_config, private_key, trusted_certificates};

/// Serves `router` as `server` on `listener` (on `runtime`), at most `max_connections` at a
/// time (each closed when idle), every request through the guard, over TLS when `tls` is given.
fn serve(
    runtime: &tokio::runtime::Handle,
    listener: TcpListener,
    router: Router,
    server: &'static str,
    max_connections: usize,
    counters: Arc<Counters>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let guard = Guard { server, counters: Arc::clone(&counters) };
    let app = router.layer(axum::middleware::from_fn_with_state(guard, guard::guard));
    let listener =
        BoundedListener::new(listener, max_connections, listener::IDLE_TIMEOUT, server, counters, tls);
    runtime.spawn(async move {
        if let Err(error) = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await {
            tracing::error!(%error, server, "the server stopped");
        }
    });
}
