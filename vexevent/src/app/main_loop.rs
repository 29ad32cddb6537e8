//! The main thread's loop while capturing: signals (SIGINT/SIGTERM stop, SIGHUP reloads, SIGUSR1
//! prints stats), the control API's requests, periodic stats reports and the stats file.

use std::{cell::RefCell, time::Duration};

use crossbeam_channel::{RecvTimeoutError, SendTimeoutError, Sender};
use tokio::signal::unix::{Signal, SignalKind, signal};

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
/// a blocking sink holds it).
const PIPELINE_SWITCH_WAIT: Duration = Duration::from_secs(5);

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
    /// The pipeline switches first (between two batches; this waits for it), then the kernel's
    /// filters follow. A pipeline that is blocked (a full sink with `when_full = "block"`) is
    /// waited for a bounded time, so that signals keep being served.
    fn reload(&self) -> Result<Reloaded, ReloadError> {
        let (settings, routing, mut reloaded) =
            reload::prepare(&self.running, &self.running_dirs, &self.source)?;
        let (switched, has_switched) = crossbeam_channel::bounded(1);
        let change = Reconfigure { updates: routing.into_updates(), switched };
        self.pipeline.send_timeout(change, PIPELINE_SWITCH_WAIT).map_err(|error| match error {
            SendTimeoutError::Timeout(_) => ReloadError::Busy,
            SendTimeoutError::Disconnected(_) => ReloadError::Stopped,
        })?;
        match has_switched.recv_timeout(PIPELINE_SWITCH_WAIT) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => reloaded.warnings.push(
                "the pipeline is blocked (a full sink with when_full = \"block\"?): it switches when it resumes".into(),
            ),
            Err(RecvTimeoutError::Disconnected) => return Err(ReloadError::Stopped),
        }
        self.probes.borrow_mut().set_filters(&settings.probes)?;
        Ok(reloaded)
    }

    /// Reloads and says how it went; the outcome as text for the control API.
    fn reload_and_report(&self) -> Result<String, String> {
        let outcome = self.reload();
        (self.notify)(Notice::Reload(&outcome));
        outcome.map(|r| r.to_string()).map_err(|e| e.to_string())
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
            _ = hangup.recv() => {
                let _ = reloader.reload_and_report();
            }
            Some(request) = control_request => match request {
                ControlRequest::Reload(answer) => {
                    let _ = answer.send(reloader.reload_and_report());
                }
                ControlRequest::Stats(answer) => {
                    let _ = answer.send(snapshot());
                }
            },
            _ = report_tick.tick(), if settings.stats_interval.is_some() => {
                (reloader.notify)(Notice::Stats(&snapshot()));
            }
            _ = file_tick.tick() => {
                if let Err(error) = write_stats_file(&settings.stats_file, &snapshot()) {
                    tracing::warn!(%error, "cannot write the stats file");
                }
            }
        }
    }
}
