//! Wiring of `vexevent run`: probes -> pipeline thread (drain and merge the rings, translate,
//! correlate, filter, route) -> sink workers and the live stream; signals, the control API, reloads,
//! periodic stats and an orderly drain on shutdown.

mod main_loop;
mod notice;
mod privileges;
mod reload;
mod stages;
mod stats_file;

pub use notice::{Notice, Notify};
pub use reload::{ConfigSource, ReloadError, Reloaded, Routing};
pub use stages::{STAGES, build_pipeline, stage_graph};
pub use stats_file::{read_stats_file, write_stats_file};

use std::{
    cell::RefCell,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    capture::{LiveCapture, RingDrainer},
    config::{Compiled, Config, Settings},
    event::Run,
    http::{Keys, StreamServer, control},
    loader::{Probes, vexfs_mount_points},
    pipeline::Reconfigure,
    sinks::Sinks,
    telemetry::{Counters, StatsSnapshot},
    translate::{KernelSource, TranslateOptions, Translator, VexfsRoots},
};
use main_loop::{Reloader, Signals, wait_for_shutdown};
/// How long, once vexevent stops, a sink that is down keeps retrying before its events are
/// counted as dropped.
const SINK_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why `vexevent run` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Loader(#[from] crate::loader::LoaderError),
    #[error(transparent)]
    Sink(#[from] crate::sinks::SinkError),
    #[error(transparent)]
    Stream(#[from] crate::http::StreamError),
    #[error(transparent)]
    Auth(#[from] crate::http::AuthError),
    #[error(transparent)]
    React(#[from] crate::react::ReactError),
    #[error(transparent)]
    Replicate(#[from] crate::replicate::ReplicateError),
    #[error("the {0} stage was built without what it needs (a wiring mistake in app/stages.rs)")]
    Wiring(&'static str),
    #[error(transparent)]
    Privilege(#[from] crate::privilege::PrivilegeError),
    #[error("cannot start the {what}: {source}")]
    Start {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Runs capture until SIGINT or SIGTERM, then drains and returns the final stats. `config` is
/// the configuration `settings` and `compiled` were built from; `source` reads it again on
/// reload; `notify` hears what the user should know while it runs.
///
/// # Errors
/// When the probes cannot be loaded or an output cannot be opened.
#[expect(
    clippy::too_many_lines,
    reason = "start-up in its order: probes, privilege drop, threads, servers, main loop"
)]
pub fn run(
    settings: &Settings,
    compiled: Compiled,
    config: Config,
    source: ConfigSource,
    notify: Notify<'_>,
) -> Result<StatsSnapshot, AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Start { what: "signal runtime", source })?;
    // The handlers exist before anything starts: a SIGINT or SIGTERM sent while the probes load
    // (or by a parent that ignores SIGINT for its background jobs, which the process inherits)
    // is kept and answered with an orderly shutdown as soon as capture runs, never lost, and a
    // signal sent right after "ready" never finds the default action.
    let signals = {
        let _context = runtime.enter();
        Signals::install()?
    };
    let counters = Arc::new(Counters::default());
    let mut probes = Probes::load(&settings.probes)?;
    notify(Notice::Attached {
        hooks: probes.hooks(),
        traced_syscalls: probes.traced_syscalls(),
        fuse_mounts: probes.fuse_mounts(),
    });
    counters.health.configure(settings.health.clone());
    counters.health.set_probes_attached(probes.hooks().iter().filter(|h| h.missing.is_none()).count());
    let keys = http_keys(settings, notify)?;
    // Root's other powers end here, before any other thread starts (new ones inherit the sets).
    let kept = privileges::needed(settings);
    renice_when_boosted(settings.drain.priority_boost, true);
    let bounding = crate::privilege::restrict(&kept)?;
    notify(Notice::Privileges { kept: &kept, bounding });
    let sinks = Sinks::start(&settings.outputs.sinks, &counters)?;
    let give_up = sinks.give_up_handle();

    let stop_capture = Arc::new(AtomicBool::new(false));
    let capture = LiveCapture::new(
        RingDrainer::new(
            probes.take_rings()?,
            probes.take_pending_loss()?,
            probes.take_consumer_polling()?,
            &settings.drain,
            probes.layout().cpus_per_shard == 1,
            Arc::clone(&counters),
        ),
        Arc::clone(&stop_capture),
    );
    // One run of this node: every event's origin, kernel or vexevent's own, names it.
    let run = Run::new(settings.node.clone());
    let kernel = KernelSource::new(capture, translator(settings, &probes, &run), Arc::clone(&counters));
    let (reloads_tx, reloads_rx) = crossbeam_channel::bounded::<Reconfigure>(1);
    let stream = match (settings.stream.addr, &keys) {
        (Some(addr), Some(keys)) => {
            Some(StreamServer::start(addr, &settings.stream, keys, Arc::clone(&counters))?)
        }
        _ => None,
    };
    let broadcaster = stream.as_ref().map(|s| Arc::clone(&s.broadcaster));
    let pipeline = build_pipeline(Box::new(kernel), settings, compiled, &run, sinks, broadcaster, &counters)?;
    let pipeline = thread::Builder::new()
        .name("vexevent-pipeline".into())
        .spawn(move || pipeline.run(&reloads_rx))
        .map_err(|source| AppError::Start { what: "pipeline thread", source })?;
    renice_when_boosted(settings.drain.priority_boost, false);

    let started = Instant::now();
    let snapshot = |probes: &Probes| {
        StatsSnapshot::new(probes.kernel_counters(), &counters, started.elapsed().as_secs_f64())
    };
    let control = match (settings.control.addr, &keys) {
        (Some(addr), Some(keys)) => {
            let (bound, requests, dashboard_login) = runtime
                .block_on(control::start(addr, &settings.control, keys, Arc::clone(&counters)))
                .map_err(|source| AppError::Start { what: "control API", source })?;
            notify(Notice::ControlApi { addr: bound, tls: settings.control.tls.is_some() });
            notify(Notice::Dashboard { login_url: &dashboard_login });
            Some(requests)
        }
        _ => None,
    };
    if let Some(stream) = &stream {
        notify(Notice::Stream { addr: stream.addr, tls: settings.stream.tls.is_some() });
    }
    let scope = &settings.probes.scope;
    let watching = if scope.watches_all() {
        Vec::new()
    } else {
        scope.dirs().iter().map(|d| String::from_utf8_lossy(d).into_owned()).collect()
    };
    notify(Notice::Ready { watching });
    // Reloads set the kernel's filters while the loop reads the kernel's counters.
    let probes = RefCell::new(probes);
    let reloader = Reloader {
        running: config,
        running_dirs: settings.probes.scope.dirs().to_vec(),
        source,
        pipeline: reloads_tx,
        probes: &probes,
        notify,
    };
    runtime
        .block_on(wait_for_shutdown(settings, signals, control, &reloader, || snapshot(&probes.borrow())))?;
    let mut probes = probes.into_inner();

    // Orderly shutdown: no new records, then drain what the ring holds, then flush the sinks
    // (a sink that is down gets a grace period, then its events are counted as dropped).
    probes.detach();
    stop_capture.store(true, Ordering::Release);
    let _ = give_up.set(Instant::now() + SINK_SHUTDOWN_GRACE);
    // The pipeline ends after its last drain of the rings: each stage flushes what it holds, then
    // the outputs deliver what is queued.
    if pipeline.join().is_err() {
        tracing::error!("the pipeline thread panicked");
    }
    let mut last = snapshot(&probes);
    last.final_snapshot = true;
    if let Err(error) = write_stats_file(&settings.stats_file, &last) {
        tracing::warn!(%error, "cannot write the stats file");
    }
    Ok(last)
}

/// The tokens of the HTTP servers, generated into files beside the stats file, when there is a
/// server.
fn http_keys(settings: &Settings, notify: Notify<'_>) -> Result<Option<Keys>, AppError> {
    if settings.stream.addr.is_none() && settings.control.addr.is_none() {
        return Ok(None);
    }
    let dir = settings.stats_file.parent().unwrap_or(std::path::Path::new("."));
    let keys = Keys::generate(dir, settings.control.metrics_gid()?)?;
    notify(Notice::Tokens { token_file: &keys.token_file, metrics_token_file: &keys.metrics_token_file });
    Ok(Some(keys))
}

/// The translate stage, knowing the watched FUSE mounts, where `VexFS` lives, and what processes
/// already had open (and where they were) inside the watch.
fn translator(settings: &Settings, probes: &Probes, run: &Run) -> Translator {
    let mut translator = Translator::new(TranslateOptions {
        scope: settings.probes.scope.clone(),
        ops: settings.ops.clone(),
        fuse_mounts: probes.fuse_mounts().iter().map(|m| (m.connection, m.mount_point.clone())).collect(),
        vexfs: VexfsRoots(settings.vexfs_paths.iter().cloned().chain(vexfs_mount_points()).collect()),
    });
    translator.set_run(run.clone());
    translator.set_named_sources(probes.named_sources().to_vec());
    let processes = translator.processes_mut();
    for (pid, cwd) in &probes.seeded().cwds {
        processes.set_cwd(*pid, cwd.clone());
    }
    for (pid, fd, path) in &probes.seeded().fds {
        processes.seed_fd(*pid, *fd, path.clone());
    }
    translator
}

/// With `capture.priority_boost` on, sets this (the main) thread's nice value: to -boost before
/// the capability drop (lowering it needs `CAP_SYS_NICE`), so that the pipeline thread it starts
/// inherits it, and back to 0 once that thread has started. A failure is a warning.
fn renice_when_boosted(boost: u8, lower: bool) {
    let nice = if lower { -i32::from(boost) } else { 0 };
    if boost > 0 {
        if let Err(error) = crate::privilege::set_thread_nice(nice) {
            tracing::warn!(%error, nice, "cannot set the nice value for capture.priority_boost");
        }
    }
}
