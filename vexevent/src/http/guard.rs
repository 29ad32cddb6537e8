//! What every HTTP request passes on its way in and out: a body or query over its limit is
//! refused before any handler runs; every outcome is counted (`http_*`) and logged with the
//! server, the peer, the path (never the query, which may carry a token) and the status.

use std::sync::Arc;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{StatusCode, header::CONTENT_LENGTH},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::listener::Peer;
use crate::telemetry::{Counters, add};

/// Largest request body accepted: no endpoint reads one (a reload is an empty POST).
pub(super) const MAX_BODY_BYTES: u64 = 4096;

/// Longest query accepted, in bytes: a stream subscription's parameters, filter included.
pub(super) const MAX_QUERY_BYTES: usize = 16 * 1024;

/// The server a guard stands in front of, and where it counts.
#[derive(Clone)]
pub(super) struct Guard {
    pub(super) server: &'static str,
    pub(super) counters: Arc<Counters>,
}

/// Refuses what is over a limit, runs the request, and counts and logs the outcome.
pub(super) async fn guard(
    State(guard): State<Guard>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let body_length = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    let query_length = request.uri().query().map_or(0, str::len);
    let response = if body_length.is_some_and(|length| length > MAX_BODY_BYTES) {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the limit of {MAX_BODY_BYTES} bytes\n"),
        )
            .into_response()
    } else if query_length > MAX_QUERY_BYTES {
        (
            StatusCode::URI_TOO_LONG,
            format!("the query is {query_length} bytes long; at most {MAX_QUERY_BYTES} are accepted\n"),
        )
            .into_response()
    } else {
        next.run(request).await
    };
    let status = response.status();
    let counter = match status {
        StatusCode::UNAUTHORIZED => &guard.counters.http_unauthorized,
        StatusCode::FORBIDDEN => &guard.counters.http_forbidden,
        StatusCode::TOO_MANY_REQUESTS => &guard.counters.http_over_capacity,
        status if status.is_client_error() => &guard.counters.http_bad_request,
        _ => &guard.counters.http_accepted,
    };
    add(counter, 1);
    if status.is_client_error() {
        tracing::warn!(server = guard.server, %peer, path, status = status.as_u16(), "refused a request");
    } else {
        tracing::info!(server = guard.server, %peer, path, status = status.as_u16(), "accepted a request");
    }
    response
}
