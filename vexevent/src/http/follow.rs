//! The committed cluster log as a live, resumable stream (`vexevent log --follow`, the control
//! API's `follow=true`, the stream server's `from=`): what is committed from a position, then
//! each entry as it commits, read from the log on disk one entry at a time, so a slow reader
//! holds one entry, never a queue; one the compaction overtook is told so and the stream ends.
//!
//! Lines (JSON, one per line): `{"index":N,"offset":K,"event":{..}}` for the `K`th event (from 0)
//! of log entry `N`; `{"next":N,"committed":C}` when nothing committed for [`HEARTBEAT`] (the
//! reader has everything before entry `N`); `{"error":"..","next":N,"skip":K}` as the last line
//! when the stream cannot go on. A reader resumes on any member from the position after the
//! last line it took: `from=N&skip=K+1` after an event line, `from=N` after a heartbeat. An
//! entry's events are in the same order on every member, so nothing is lost or repeated.
//!
//! Sessions: a reader that carries the last index it saw (`session=INDEX&wait_ms=MS`) is
//! answered only once this member applied that index, or refused with the reason.

use std::{
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::telemetry::ClusterView;

/// The longest a follow stream stays quiet: a heartbeat line comes at least this often.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Waits (up to `wait_ms`) until this member applied a reader's `session` index.
///
/// # Errors
/// The reason, for the reader, when the member did not apply it in time.
pub async fn session_applied(view: &dyn ClusterView, session: u64, wait_ms: u64) -> Result<(), String> {
    view.applied_at_least(session, Duration::from_millis(wait_ms)).await.map_err(|applied| {
        format!(
            "this member applied the log up to index {applied}; the session saw index {session} (waited {wait_ms} ms): ask again, or ask another member"
        )
    })
}

/// A reader's place in the committed log, moved on as the stream is read.
pub struct Follow {
    view: Arc<dyn ClusterView>,
    /// The next entry to read.
    index: u64,
    /// Events of entry `index` the reader already has.
    skip: u64,
    ended: bool,
}

impl Follow {
    /// Follows the log from the `skip`th event of entry `from`.
    #[must_use]
    pub fn new(view: Arc<dyn ClusterView>, from: u64, skip: u64) -> Self {
        Self { view, index: from, skip, ended: false }
    }

    /// The next lines (each ending in a newline): the events of the next entry that has any,
    /// once committed, or a heartbeat after [`HEARTBEAT`]; `None` after the error line.
    /// Cancel-safe: the position moves only where lines are returned without an await between.
    pub async fn next(&mut self) -> Option<String> {
        if self.ended {
            return None;
        }
        let started = Instant::now();
        // Whether the wait said the position is applied since the position last moved.
        let mut waited = false;
        loop {
            let page = match self.view.log(self.index, 1) {
                Ok(page) => page,
                Err(error) => {
                    self.ended = true;
                    let line = serde_json::json!({ "error": error, "next": self.index, "skip": self.skip });
                    return Some(format!("{line}\n"));
                }
            };
            let mut lines = String::new();
            for entry in &page.entries {
                for (offset, event) in entry.after((self.index, self.skip)) {
                    let _ =
                        writeln!(lines, r#"{{"index":{},"offset":{offset},"event":{event}}}"#, entry.index);
                }
            }
            if page.next > self.index {
                (self.index, self.skip, waited) = (page.next, 0, false);
                if !lines.is_empty() {
                    return Some(lines);
                }
                continue;
            }
            // Nothing committed at the position yet: wait for it, or say where the reader stands.
            // (Index 0 counts as applied before anything is: wait for 1, which implies it.)
            let left = HEARTBEAT.saturating_sub(started.elapsed());
            if waited || left.is_zero() || self.view.applied_at_least(self.index.max(1), left).await.is_err()
            {
                // A member that is stopping answers at once: not a busy loop.
                tokio::time::sleep_until((started + HEARTBEAT).into()).await;
                return Some(format!("{{\"next\":{},\"committed\":{}}}\n", self.index, page.committed));
            }
            waited = true;
        }
    }
}

/// A stream request's log parameters: `from` and `skip` (serve the committed log from there,
/// see [`Follow`]), `session` and `wait_ms` (see [`session_applied`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogParams {
    pub from: Option<u64>,
    pub skip: u64,
    pub session: Option<u64>,
    pub wait_ms: u64,
}

/// The parameters a request with `from` may carry besides the log's: the token.
const WITH_FROM: [&str; 5] = ["from", "skip", "session", "wait_ms", "token"];

impl LogParams {
    /// The log parameters of a stream request's `query` (`wait_ms` defaults to `wait_default`,
    /// at most `wait_max`).
    ///
    /// # Errors
    /// A value that is not a number, `skip` without `from`, or, with `from`, a parameter that
    /// selects events of the live stream (the log is served whole).
    pub fn parse(
        query: &std::collections::BTreeMap<String, String>,
        wait_default: u64,
        wait_max: u64,
    ) -> Result<Self, String> {
        let number = |key: &str| {
            query
                .get(key)
                .map(|value| value.parse::<u64>().map_err(|_| format!("{key}={value} is not a number")))
                .transpose()
        };
        let params = Self {
            from: number("from")?,
            skip: number("skip")?.unwrap_or(0),
            session: number("session")?,
            wait_ms: number("wait_ms")?.unwrap_or(wait_default).min(wait_max),
        };
        if params.from.is_none() && params.skip > 0 {
            return Err("skip= counts events of the entry at from=; give from= too".into());
        }
        if params.from.is_some() {
            if let Some(key) = query.keys().find(|key| !WITH_FROM.contains(&key.as_str())) {
                return Err(format!(
                    "{key}= selects events of the live stream; from= serves the committed log whole (from, skip, session, wait_ms)"
                ));
            }
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<LogParams, String> {
        let query = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        LogParams::parse(&query, 5, 10)
    }

    #[test]
    fn log_parameters_are_read_and_bounded_and_mixed_ones_refused() {
        assert_eq!(parse(&[("token", "t")]).unwrap(), LogParams { wait_ms: 5, ..LogParams::default() });
        assert_eq!(
            parse(&[("from", "7"), ("skip", "2"), ("session", "6"), ("wait_ms", "99")]).unwrap(),
            LogParams { from: Some(7), skip: 2, session: Some(6), wait_ms: 10 }
        );
        assert_eq!(parse(&[("session", "3"), ("event_types", "FilesystemWrite")]).unwrap().session, Some(3));
        assert!(parse(&[("from", "x")]).unwrap_err().contains("from=x is not a number"));
        assert!(parse(&[("skip", "1")]).unwrap_err().contains("give from="));
        assert!(parse(&[("from", "1"), ("filter", "pid == 1")]).unwrap_err().contains("filter= selects"));
    }
}
