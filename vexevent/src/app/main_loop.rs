//! The main thread's loop while capturing: signals (SIGINT/SIGTERM stop, SIGHUP reloads, SIGUSR1
//! prints stats), the control API's requests, periodic stats reports and the stats file.

use std::{cell::RefCell, time::Duration};

use crossbeam_channel::{Sender, TrySendError};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::oneshot,
    time::Instant,
};

use super::{AppError, ConfigSource, Notice, Notify, ReloadError, Reloaded, reload, write_stats_file};
use crate::{
    config::{Config, Settings},
    http::ControlRequest,
    loader::Probes,
    pipeline::Reconfigure,
    telemetry::StatsSnapshot,
};

/// How often the stats file is refreshed.
const STATS_FILE_PERIOD: Duration = Duration::from_secs(1);
/// How long a reload waits for the pipeline to switch (it switches within one 5 ms tick unless
/// a blocking sink holds it) before it is reported with a warning.
const PIPELINE_SWITCH_WAIT: Duration = Duration::from_secs(5);

/// Where a reload's outcome goes: the control API request that asked for it, if any.
type Answer = Option<oneshot::Sender<Result<String, String>>>;

/// A reload handed to the pipeline and not yet taken: the kernel's filters follow once the
/// pipeline has switched. The loop keeps serving signals and requests meanwhile.
struct Pending {
    settings: Settings,
    reloaded: Reloaded,
    switched: oneshot::Receiver<()>,
    deadline: Instant,
    answer: Answer,
}

/// Applies reloads: reads the configuration again and hands the new routing to the pipeline.
pub(super) struct Reloader<'a> {
    pub(super) running: Config,
    /// The directories the probes watch (a change applies at restart).
    pub(super) running_dirs: Vec<Vec<u8>>,
    pub(super) source: ConfigSource,
    pub(super) pipeline: Sender<Reconfigure>,
    pub(super) probes: &'a RefCell<Probes>,
    pub(super) notify: Notify<'a>,
}

impl Reloader<'_> {
    /// Validates the configuration again and hands the new routing to the pipeline, which
    /// switches between two batches; one reload at a time.
    fn begin(&self, pending: &mut Option<Pending>, answer: Answer) {
        if pending.is_some() {
            return self.report(Err(ReloadError::Busy), answer);
        }
        let (settings, routing, reloaded) =
            match reload::prepare(&self.running, &self.running_dirs, &self.source) {
                Ok(prepared) => prepared,
                Err(error) => return self.report(Err(error), answer),
            };
        let (switched, has_switched) = oneshot::channel();
        let change = Reconfigure { updates: routing.into_updates(), switched };
        match self.pipeline.try_send(change) {
            Ok(()) => {
                let deadline = Instant::now() + PIPELINE_SWITCH_WAIT;
                *pending = Some(Pending { settings, reloaded, switched: has_switched, deadline, answer });
            }
            Err(TrySendError::Full(_)) => self.report(Err(ReloadError::Busy), answer),
            Err(TrySendError::Disconnected(_)) => self.report(Err(ReloadError::Stopped), answer),
        }
    }

    /// Once the pipeline has switched (or is blocked past the wait, with a warning), the kernel's
    /// filters follow; then the outcome is reported.
    fn finish(&self, pending: Pending, switched: Option<Result<(), oneshot::error::RecvError>>) {
        let Pending { settings, mut reloaded, answer, .. } = pending;
        let outcome = match switched {
            Some(Err(_)) => Err(ReloadError::Stopped),
            waited => {
                if waited.is_none() {
                    reloaded.warnings.push(
                        "the pipeline is blocked (a full sink with when_full = \"block\"?): it switches when it resumes"
                            .into(),
                    );
                }
                self.probes.borrow_mut().set_filters(&settings.probes).map(|()| reloaded).map_err(Into::into)
            }
        };
        self.report(outcome, answer);
    }

    /// Says how a reload went, and answers the request that asked for it.
    fn report(&self, outcome: Result<Reloaded, ReloadError>, answer: Answer) {
        (self.notify)(Notice::Reload(&outcome));
        if let Some(answer) = answer {
            let _ = answer.send(outcome.map(|r| r.to_string()).map_err(|e| e.to_string()));
        }
    }
}

/// Waits for the pending reload's switch until its deadline (`None`: the deadline passed);
/// never completes when no reload is pending.
async fn switch_of(pending: &mut Option<Pending>) -> Option<Result<(), oneshot::error::RecvError>> {
    match pending {
        Some(pending) => tokio::time::timeout_at(pending.deadline, &mut pending.switched).await.ok(),
        None => std::future::pending().await,
    }
}

/// The signals `vexevent run` handles.
pub(super) struct Signals {
    interrupt: Signal,
    terminate: Signal,
    user1: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime's context).
    pub(super) fn install() -> Result<Self, AppError> {
        let start = |kind: SignalKind| {
            signal(kind).map_err(|source| AppError::Start { what: "signal handler", source })
        };
        Ok(Self {
            interrupt: start(SignalKind::interrupt())?,
            terminate: start(SignalKind::terminate())?,
            user1: start(SignalKind::user_defined1())?,
            hangup: start(SignalKind::hangup())?,
        })
    }
}

/// Waits for SIGINT/SIGTERM; reloads on SIGHUP; prints stats on SIGUSR1 and every stats
/// interval; keeps the stats file current; answers the control API.
pub(super) async fn wait_for_shutdown(
    settings: &Settings,
    signals: Signals,
    mut control: Option<tokio::sync::mpsc::Receiver<ControlRequest>>,
    reloader: &Reloader<'_>,
    snapshot: impl Fn() -> StatsSnapshot,
) -> Result<(), AppError> {
    let Signals { mut interrupt, mut terminate, mut user1, mut hangup } = signals;
    let mut pending: Option<Pending> = None;
    // The stats file is written off the runtime (blocking I/O); one write at a time.
    let mut writing: Option<tokio::task::JoinHandle<()>> = None;
    let mut file_tick = tokio::time::interval(STATS_FILE_PERIOD);
    let mut report_tick = tokio::time::interval(settings.stats_interval.unwrap_or(Duration::MAX / 4));
    report_tick.tick().await;
    loop {
        let control_request = async {
            match control.as_mut() {
                Some(requests) => requests.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = user1.recv() => (reloader.notify)(Notice::Stats(&snapshot())),
            _ = hangup.recv() => reloader.begin(&mut pending, None),
            switched = switch_of(&mut pending) => {
                if let Some(taken) = pending.take() {
                    reloader.finish(taken, switched);
                }
            }
            Some(request) = control_request => match request {
                ControlRequest::Reload(answer) => reloader.begin(&mut pending, Some(answer)),
                ControlRequest::Stats(answer) => {
                    let _ = answer.send(snapshot());
                }
                ControlRequest::Rollback { seq, answer } => {
                    // Off the runtime: the undo and the audit log's sync are blocking.
                    let file = reloader.running.react.audit_log.clone();
                    tokio::task::spawn_blocking(move || {
                        let outcome = crate::react::rollback_line(&file, seq)
                            .map(|(detail, written)| format!("{detail} (audit line {})", written.seq))
                            .map_err(|error| format!("{}: {error}", file.display()));
                        let _ = answer.send(outcome);
                    });
                }
            },
            _ = report_tick.tick(), if settings.stats_interval.is_some() => {
                (reloader.notify)(Notice::Stats(&snapshot()));
            }
            _ = file_tick.tick() => {
                if writing.as_ref().is_none_or(tokio::task::JoinHandle::is_finished) {
                    let (file, snapshot) = (settings.stats_file.clone(), snapshot());
                    writing = Some(tokio::task::spawn_blocking(move || {
                        if let Err(error) = write_stats_file(&file, &snapshot) {
                            tracing::warn!(%error, "cannot write the stats file");
                        }
                    }));
                }
            }
        }
    }
}
