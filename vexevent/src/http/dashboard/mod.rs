//! The built-in live dashboard on the control address: `GET /dashboard` serves one page (HTML,
//! JavaScript and uPlot, embedded in the binary) that follows `GET /dashboard/events`, a
//! Server-Sent Events stream of the analyse stage's window summaries (the kept history first,
//! then one per window). A browser cannot send an `Authorization` header from `EventSource`,
//! so the dashboard signs in once: a one-time login URL (printed at start, or minted by
//! `POST /api/v1/control/dashboard-login` with the API token) sets a session cookie
//! (`HttpOnly`, `SameSite=Strict`, path `/dashboard`) that every dashboard request must carry;
//! a bearer token is accepted too. Codes and sessions are random, bounded in number, compared in
//! constant time and never logged.

use std::{collections::VecDeque, convert::Infallible, sync::Mutex, time::Duration};

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::stream::{self, Stream, StreamExt as _};
use tokio::sync::broadcast::error::RecvError;

use super::auth::{Token, bearer_token, random_token};
use super::control::ControlState;
use crate::telemetry::lock;

/// The dashboard's paths.
pub const DASHBOARD_PATH: &str = "/dashboard";
pub const DASHBOARD_LOGIN_PATH: &str = "/dashboard/login";
pub const DASHBOARD_EVENTS_PATH: &str = "/dashboard/events";
/// Where a holder of the API token gets a new one-time login URL (POST).
pub const DASHBOARD_LOGIN_API_PATH: &str = "/api/v1/control/dashboard-login";

const COOKIE: &str = "vexevent_dashboard";
/// Unused login codes kept (the oldest is forgotten first).
const MAX_CODES: usize = 8;
/// Signed-in browsers kept (the oldest is signed out first).
const MAX_SESSIONS: usize = 32;
/// A comment every so often keeps proxies and the browser from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("dashboard.js");
const UPLOT_JS: &str = include_str!("uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("uplot/uPlot.min.css");

/// One-time login codes and the sessions they opened.
#[derive(Default)]
pub(super) struct Logins {
    codes: Mutex<VecDeque<Token>>,
    sessions: Mutex<VecDeque<Token>>,
}

impl Logins {
    /// A new one-time code (an error only if the kernel's random generator fails).
    pub(super) fn issue(&self) -> Result<String, super::AuthError> {
        let code = random_token()?;
        let text = code.expose().to_owned();
        let mut codes = lock(&self.codes);
        if codes.len() == MAX_CODES {
            codes.pop_front();
        }
        codes.push_back(code);
        Ok(text)
    }

    /// Spends `code` and opens a session, whose token is returned.
    fn redeem(&self, code: &str) -> Option<Token> {
        let mut codes = lock(&self.codes);
        let position = codes.iter().position(|c| c.matches(code))?;
        codes.remove(position);
        drop(codes);
        let session = random_token().ok()?;
        let mut sessions = lock(&self.sessions);
        if sessions.len() == MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back(session.clone());
        Some(session)
    }

    fn has_session(&self, presented: &str) -> bool {
        lock(&self.sessions).iter().any(|s| s.matches(presented))
    }
}

/// The session cookie's value in `headers`, if any.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// Whether the request carries a session cookie or a token that may read.
fn signed_in(state: &ControlState, headers: &HeaderMap) -> bool {
    session_cookie(headers).is_some_and(|s| state.logins.has_session(s))
        || bearer_token(headers).is_some() && state.authorized(headers, true)
}

const SIGN_IN: &str = "sign in with the one-time login URL vexevent printed at start, \
or get a new one: curl -X POST -H \"Authorization: Bearer $(cat TOKEN_FILE)\" http://ADDRESS/api/v1/control/dashboard-login\n";

fn not_signed_in() -> Response {
    (StatusCode::UNAUTHORIZED, SIGN_IN).into_response()
}

fn content(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

pub(super) async fn page(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if !signed_in(&state, &headers) {
        return not_signed_in();
    }
    content("text/html; charset=utf-8", PAGE)
}

pub(super) async fn asset(
    State(state): State<ControlState>,
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    if !signed_in(&state, &headers) {
        return not_signed_in();
    }
    match name.as_str() {
        "dashboard.js" => content("text/javascript; charset=utf-8", SCRIPT),
        "uPlot.iife.min.js" => content("text/javascript; charset=utf-8", UPLOT_JS),
        "uPlot.min.css" => content("text/css; charset=utf-8", UPLOT_CSS),
        _ => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct LoginQuery {
    code: String,
}

/// Spends a login code: sets the session cookie and goes to the dashboard.
pub(super) async fn login(State(state): State<ControlState>, Query(query): Query<LoginQuery>) -> Response {
    let Some(session) = state.logins.redeem(&query.code) else {
        return (StatusCode::UNAUTHORIZED, "this login URL is unknown or was used already\n").into_response();
    };
    let cookie = format!("{COOKIE}={}; Path={DASHBOARD_PATH}; HttpOnly; SameSite=Strict", session.expose());
    ([(header::SET_COOKIE, cookie)], Redirect::to(DASHBOARD_PATH)).into_response()
}

/// Mints a one-time login URL for a holder of the API token.
pub(super) async fn new_login(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if !state.authorized(&headers, false) {
        return super::control::UNAUTHORIZED.into_response();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    match state.logins.issue() {
        Ok(code) => format!("http://{host}{DASHBOARD_LOGIN_PATH}?code={code}\n").into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}

/// The window summaries: the kept history, then each new one as it closes.
pub(super) async fn events(State(state): State<ControlState>, headers: HeaderMap) -> Response {
    if !signed_in(&state, &headers) {
        return not_signed_in();
    }
    let analytics = &state.counters.analytics;
    // Subscribed before the history is read: a frame may come twice, never not at all.
    let live = analytics.subscribe();
    let history =
        stream::iter(analytics.history()).map(|frame| Ok::<_, Infallible>(Event::default().data(&*frame)));
    let live = stream::unfold((live, state.counters), |(mut live, counters)| async move {
        let event = match live.recv().await {
            Ok(live) => {
                // Handed to the response's stream, which writes it to the socket next.
                counters.analytics.record_sent(live.closed);
                Event::default().data(&*live.frame)
            }
            // A viewer too slow for the frames is told how many it missed.
            Err(RecvError::Lagged(missed)) => Event::default().event("lagged").data(missed.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), (live, counters)))
    });
    sse(history.chain(live)).into_response()
}

fn sse<S: Stream<Item = Result<Event, Infallible>> + Send + 'static>(events: S) -> impl IntoResponse {
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_opens_one_session_once() {
        let logins = Logins::default();
        let code = logins.issue().unwrap();
        assert!(logins.redeem("wrong").is_none());
        let session = logins.redeem(&code).unwrap();
        assert!(logins.redeem(&code).is_none(), "one time only");
        assert!(logins.has_session(session.expose()));
        assert!(!logins.has_session("x"));
        for _ in 0..=MAX_CODES {
            logins.issue().unwrap();
        }
        assert_eq!(lock(&logins.codes).len(), MAX_CODES, "bounded");
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=b; vexevent_dashboard=s3cret; c=d".parse().unwrap());
        assert_eq!(session_cookie(&headers), Some("s3cret"));
        headers.insert(header::COOKIE, "vexevent_dashboardx=1".parse().unwrap());
        assert_eq!(session_cookie(&headers), None);
    }
}
