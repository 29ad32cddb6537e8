//! What every HTTP request passes on its way in and out: a request a web page in a browser sent
//! from another site (its `Origin` is not this server) is refused, so a page cannot drive the
//! API with a token it somehow learnt nor probe it; a body or query over its limit is refused
//! before any handler runs; every outcome is counted (`http_*`) and logged with the
//! server, the peer, the path (never the query, which may carry a token) and the status.

use std::sync::Arc;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{
        HeaderMap, StatusCode,
        header::{CONTENT_LENGTH, HOST, ORIGIN},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::listener::Peer;
use crate::telemetry::{Counters, add};

/// Largest request body accepted: no endpoint reads one (a reload is an empty POST).
const MAX_BODY_BYTES: u64 = 4096;

/// Longest query accepted, in bytes: a stream subscription's parameters, filter included.
const MAX_QUERY_BYTES: usize = 16 * 1024;

/// The server a guard stands in front of, and where it counts.
#[derive(Clone)]
pub(super) struct Guard {
    pub(super) server: &'static str,
    pub(super) counters: Arc<Counters>,
}

/// The `Origin` of a request a browser sent from a page of another site (any page: this server
/// serves none); `None` when there is no `Origin` (not a browser) or it is this server.
fn cross_site_origin(headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(ORIGIN)?;
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let same = ["http://", "https://"]
        .iter()
        .filter_map(|scheme| origin.strip_prefix(scheme))
        .any(|authority| host.is_some_and(|host| authority.eq_ignore_ascii_case(host)));
    (!same).then_some(origin)
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
    let response = if let Some(origin) = cross_site_origin(request.headers()) {
        (
            StatusCode::FORBIDDEN,
            format!("cross-site requests are refused (Origin {origin:?} is not this server)\n"),
        )
            .into_response()
    } else if body_length.is_some_and(|length| length > MAX_BODY_BYTES) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn only_requests_from_other_sites_are_cross_site() {
        assert_eq!(cross_site_origin(&headers(&[("host", "127.0.0.1:7878")])), None, "not a browser");
        assert_eq!(
            cross_site_origin(&headers(&[("host", "127.0.0.1:7878"), ("origin", "http://127.0.0.1:7878")])),
            None
        );
        for origin in ["https://evil.example", "http://127.0.0.1:7879", "null", "http://127.0.0.1:7878.evil"]
        {
            let found = cross_site_origin(&headers(&[("host", "127.0.0.1:7878"), ("origin", origin)]));
            assert_eq!(found.as_deref(), Some(origin));
        }
    }
}
